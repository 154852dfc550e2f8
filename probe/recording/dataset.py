"""Record a dataset: every (prompt, seed) of a prompt set, into a folder
(see :mod:`probe.recording.store`).

    record_dataset(pipe, load_template("colour_car"), seeds=range(32), out="runs/colour_car")

Samples are generated several per pipeline call (each from its own seed's noise, so a sample does
not depend on its batch), split, and written one file each. The memory of one batch and the disk
the whole set takes are checked before the first step; a rerun skips what is done.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from probe.attention.layer_info import LayerSpec
from probe.attention.layers import resolve_layers
from probe.attention.steps import StepSpec, resolve_steps
from probe.families import family_of
from probe.models import generation_defaults, run_layer_table
from probe.models.schedulers import loop_length
from probe.models.vocabulary import check_known_words
from probe.prompts.words import prompt_tokens
from probe.recording.maps import AttentionMaps
from probe.recording.recorder import (
    AUTO_SVD,
    DEFAULT_BUDGET,
    BudgetError,
    format_bytes,
    plan_recording,
    record_attention,
)
from probe.recording.reduce import HeadSpec, SelfReduce
from probe.recording.store import DatasetFolder, SampleSpec, sample_specs, shard_specs

log = logging.getLogger(__name__)

HEADER_BYTES = 4096  # safetensors header and JSON metadata of one sample, roughly


@dataclass
class RecordReport:
    """What one :func:`record_dataset` call did."""

    out: Path
    total: int
    shard: tuple[int, int]
    skipped: int
    recorded: int
    bytes_per_sample: int
    seconds: float


def parse_bytes(spec: str | int | None) -> int | None:
    """``"4GiB"``, ``"500MB"``, ``"2G"`` or a number of bytes."""
    if spec is None or isinstance(spec, int):
        return spec
    units = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    s = spec.strip().lower().replace("ib", "").replace("b", "")
    unit = s[-1] if s and s[-1] in units else ""
    try:
        return int(float(s[: len(s) - len(unit)]) * units[unit])
    except ValueError as err:
        raise ValueError(f"size {spec!r}: write it like '4GiB', '500MB' or 1000000") from err


def dataset_settings(
    pipe: Any,
    template: str,
    classes: dict[str, list[str]],
    layers: LayerSpec,
    steps: StepSpec,
    kinds: Sequence[str],
    heads: HeadSpec,
    self_reduce: str,
    model: str,
    gen: dict[str, Any],
    random_init: int | None = None,
    cross_tokens: str = "prompt",
) -> dict[str, Any]:
    """The settings ``meta.json`` holds (``self_reduce`` still unresolved when ``auto``).

    ``layers`` is resolved against the table of the run, at the generated size ``gen``.
    """
    latent = (gen["height"] // pipe.vae_scale_factor, gen["width"] // pipe.vae_scale_factor)
    table = run_layer_table(pipe, gen["height"], gen["width"])
    return {
        "model": model,
        "random_init": random_init,
        "template": template,
        "classes": classes,
        "layers": resolve_layers(table, layers),
        # the pipeline loop's iterations (PNDM: one more than num_inference_steps)
        "steps": resolve_steps(steps, loop_length(pipe.scheduler, gen["num_inference_steps"])),
        "kinds": sorted(kinds),
        "heads": heads,
        "self_reduce": self_reduce,
        "dtype": "float16",
        "cross_tokens": cross_tokens,
        "latent_hw": list(latent),
        **gen,
    }


def text_keys(pipe: Any) -> int:
    """Text keys of every attention call (the family's ``text_keys``): 77 CLIP tokens; SD3
    adds T5's 256 (diffusers' ``max_sequence_length``, zeros without T5) to its joint tokens;
    Flux's are T5's 512; PixArt-Σ's T5's 300."""
    return family_of(pipe).text_key_count(pipe)


def check_budget(
    pipe: Any,
    settings: dict[str, Any],
    specs: Sequence[SampleSpec],
    batch_size: int,
    budget_bytes: int,
    out: Path,
    max_disk: int | None = None,
) -> tuple[str, int]:
    """Resolve ``self_reduce='auto'`` and check memory per batch and disk for ``specs``.

    Returns:
        The resolved ``self_reduce`` and the estimated bytes of one sample file.

    Raises:
        BudgetError: a batch would not fit ``budget_bytes`` or the files would not fit the disk;
            the message names the options to change.
    """
    table = run_layer_table(pipe, settings["height"], settings["width"])
    layers = [table[i] for i in settings["layers"]]
    tokenizer = getattr(pipe, family_of(pipe).words[0])  # whose tokens the text keys are
    n_tokens = max((len(prompt_tokens(tokenizer, s.prompt)) for s in specs), default=77)
    tokens = n_tokens if settings["cross_tokens"] == "prompt" else 77
    spec = settings["self_reduce"]
    choices = [SelfReduce.parse(spec)] if spec != "auto" else [SelfReduce("full"), AUTO_SVD]
    for reduce in choices:

        def plan(rows: int, n_tokens: int, reduce: SelfReduce = reduce) -> int:
            return plan_recording(
                layers, settings["latent_hw"], settings["steps"], rows, settings["kinds"],
                settings["heads"], reduce, torch.float16, tokens=n_tokens,
            ).total_bytes  # fmt: skip

        mem, disk = plan(batch_size, text_keys(pipe)), plan(1, tokens)
        if mem <= budget_bytes:
            break
    else:
        raise BudgetError(
            f"one batch of {batch_size} samples needs {format_bytes(mem)} of maps, over "
            f"--budget {format_bytes(budget_bytes)}: use --batch-size 1, --self-reduce svd:8 or "
            "pool:8, fewer --layers or --steps, --kinds cross, or a larger --budget"
        )
    per_sample = disk + HEADER_BYTES + 64 * len(layers) * len(settings["steps"]) * 2
    need = per_sample * len(specs)
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    limit = min(free, max_disk) if max_disk is not None else free
    if need > limit:
        which = "--max-disk" if max_disk is not None and max_disk < free else "free disk"
        raise BudgetError(
            f"{len(specs)} samples x {format_bytes(per_sample)} = {format_bytes(need)} would not "
            f"fit {which} ({format_bytes(limit)}) in {out}: use --self-reduce svd:8 or pool:4, "
            "fewer --layers or --steps, --kinds cross, fewer --seeds, another --out, or a larger "
            "--max-disk"
        )
    return str(reduce), per_sample


def split_sample(maps: AttentionMaps, row: int, trim_cross: bool) -> AttentionMaps:
    """The maps of batch row ``row`` as a one-sample recording (cross trimmed to its tokens)."""
    tokens = maps.tokens[row]
    data = {}
    for name, t in maps.data.items():
        part = t[row : row + 1]
        if trim_cross and name.startswith("cross/") and tokens:
            part = part[..., : len(tokens)]
        data[name] = part.clone()
    settings = dict(maps.settings)
    if "row_roles" in settings:
        settings["row_roles"] = [settings["row_roles"][row]]
    return AttentionMaps(
        layers=maps.layers,
        latent_hw=maps.latent_hw,
        tokens=[tokens],
        timesteps=dict(maps.timesteps),
        settings=settings,
        data=data,
    )


def record_dataset(
    pipe: Any,
    prompts: Any,
    seeds: Sequence[int],
    out: str | Path,
    *,
    model: str = "custom",
    layers: LayerSpec = "all",
    steps: StepSpec = "all",
    kinds: Sequence[str] = ("cross", "self"),
    heads: HeadSpec = "mean",
    self_reduce: str = "auto",
    num_steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 8,
    shard: tuple[int, int] = (0, 1),
    budget_bytes: int = DEFAULT_BUDGET,
    max_disk: int | None = None,
    images: bool = False,
    random_init: int | None = None,
    progress: bool = True,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
) -> RecordReport:
    """Generate every (prompt, seed) sample of this shard not yet in ``out`` and record it.

    Args:
        pipe: a diffusers SD pipeline.
        prompts: a :class:`probe.prompts.templates.PromptSet`.
        seeds: noise seeds; each prompt is generated once per seed.
        out: the dataset folder (created; a rerun resumes it).
        model: the model's name, stored with every sample.
        layers, steps, kinds, heads, self_reduce: what to record (see
            :func:`probe.recording.recorder.record_attention`); ``auto`` is resolved once for the
            dataset.
        num_steps, guidance: sampling settings (default: the model's, see
            :func:`probe.models.defaults.generation_defaults`).
        height, width: image size in pixels (default: the model's); ``layers`` resolves at
            this size (``res<=16``: 16 query positions per side of the latent generated).
        batch_size: samples per pipeline call.
        shard: ``(i, n)``: record only shard ``i`` of ``n``
            (see :func:`probe.recording.store.shard_specs`).
        budget_bytes: memory the maps of one batch may take.
        max_disk: bytes the new files may take (default: the free disk).
        images: also save each generated image as PNG.
        random_init: the seed the model's weights were re-initialised with, if they were (a
            control dataset; see :mod:`probe.recording.random_control`), stored in the settings.
        progress: show a tqdm bar.
        on_sample: called with each new index entry (after it is on disk).

    Returns:
        A :class:`RecordReport`.

    Raises:
        SettingsMismatchError: ``out`` holds a dataset recorded with other settings.
        BudgetError: memory or disk would not suffice (before anything is generated).
        UnknownWordError: a prompt has a word outside the model's closed vocabulary (the
            toy's; see :mod:`probe.models.vocabulary`), before anything is written.

    Example:
        >>> record_dataset(load_pipeline("tiny"), load_template("colour_car"), range(4), "runs/c")
    """
    start = time.perf_counter()
    check_known_words(pipe, [item.prompt for item in prompts.items])  # before the folder exists
    out = Path(out)
    gen = generation_defaults(pipe)
    given = {"num_inference_steps": num_steps, "guidance_scale": guidance, "height": height,
             "width": width}  # fmt: skip
    gen.update({k: v for k, v in given.items() if v is not None})
    settings = dataset_settings(
        pipe,
        prompts.name,
        {k: list(v) for k, v in prompts.slots.items()},
        layers,
        steps,
        kinds,
        heads,
        self_reduce,
        model,
        gen,
        random_init,
    )
    folder = DatasetFolder(out)
    folder.ensure_meta(settings)
    mine = shard_specs(sample_specs(prompts.items, seeds), shard)
    done = folder.finished(mine)
    todo = [s for s in mine if s.id not in done]
    resolved, per_sample = check_budget(
        pipe, settings, todo, batch_size, budget_bytes, out, max_disk
    )
    extra = {"model": model, "settings": settings | {"self_reduce": resolved}}
    bar = tqdm(
        total=len(mine), initial=len(done), disable=not progress, desc="record", unit="sample"
    )
    for i in range(0, len(todo), batch_size):
        batch = todo[i : i + batch_size]
        maps, pil = _generate(pipe, batch, settings, resolved, budget_bytes, images)
        for row, spec in enumerate(batch):
            sample = split_sample(maps, row, settings["cross_tokens"] == "prompt")
            image = pil[row] if pil is not None else None
            entry = folder.write_sample(spec, sample, extra, image)
            if on_sample is not None:
                on_sample(entry)
            bar.update(1)
    bar.close()
    seconds = time.perf_counter() - start
    return RecordReport(out, len(mine), shard, len(done), len(todo), per_sample, seconds)


def _generate(
    pipe: Any,
    batch: Sequence[SampleSpec],
    settings: dict[str, Any],
    self_reduce: str,
    budget_bytes: int,
    images: bool,
) -> tuple[AttentionMaps, list[Any] | None]:
    prompts = [s.prompt for s in batch]
    with record_attention(
        pipe, layers=settings["layers"], kinds=settings["kinds"], steps=settings["steps"],
        heads=settings["heads"], self_reduce=self_reduce, budget_bytes=budget_bytes,
        prompts=prompts,
    ) as maps:  # fmt: skip
        result = pipe(
            prompts,
            num_inference_steps=settings["num_inference_steps"],
            height=settings["height"],
            width=settings["width"],
            generator=[torch.Generator().manual_seed(s.seed) for s in batch],
            output_type="pil" if images else "latent",
            **family_of(pipe).pipe_kwargs(pipe, prompts, settings["guidance_scale"]),
        )
    if len(maps.tokens) != len(batch):
        raise RuntimeError(f"recorded {len(maps.tokens)} samples for a batch of {len(batch)}")
    return maps, (result.images if images else None)
