"""Replica folders: diffusers folders laid out like Stable Diffusion checkpoints as downloaded
from the Hugging Face hub, with small random weights, for tests.

    python tests/replicas/build.py --out /tmp/replicas            # every replica
    python tests/replicas/build.py --out /tmp/replicas sd15 sd21  # some of them

Replicas: ``sd15`` (stable-diffusion-v1-5/stable-diffusion-v1-5), ``sd21-base``
(stabilityai/stable-diffusion-2-1-base, 512 px, epsilon), ``sd21`` (stabilityai/stable-diffusion-2-1,
768 px, v-prediction), ``sdxl-base`` (stabilityai/stable-diffusion-xl-base-1.0), the DiTs
``sd3-medium`` (stabilityai/stable-diffusion-3-medium-diffusers: three text encoders, T5
included) and ``flux-dev`` (black-forest-labs/FLUX.1-dev), and ``toy-sd15`` (the toy's trained
weights dressed as an SD 1.5 folder).

``tests/replicas/<name>/`` holds the real folder's configs, full size and as shipped, in the real
layout (``model_index.json``, ``scheduler/scheduler_config.json``, ``unet/config.json``, ...). Each
file's ``_comment`` key says where its values come from and which could not be found; the build
drops those keys. The same files give the full-size layer tables (``unet/config.json`` on the
meta device). ``<name>/tiny.json`` says what the build changes: the size keys of each config only
(channels, text hidden sizes, text layer counts, the vocabulary), the seed, and which weight files
to write. The tokenizers get the toy's words (``probe.models.loading.tiny_words``) through
:func:`probe.models.clip_tokenizer.write_clip_tokenizer`, beside the real ``tokenizer_config.json``
and ``special_tokens_map.json``; a T5 tokenizer folder (``extra_ids`` in its config) gets the
same words as a ``tokenizer.json`` (:func:`probe.models.tiny_dit.tiny_t5_tokenizer`) and no
``spiece.model``. Every weight file is safetensors, fp32 and its ``fp16`` variant (and SD 1.5's
``non_ema``) where the real folder has them, split into shards with their index where the real
one is (``tiny.json``'s ``shards``: the DiTs' T5 and FLUX.1-dev's transformer).

``toy-sd15``: SD 1.5's ``model_index.json`` (safety checker and feature extractor listed), its
PNDM ``scheduler_config.json``, feature extractor and tokenizer configs and a tiny random safety
checker, around the toy's UNet, VAE and text encoder (configs and weights copied from
``probe/toy/models/toy_v1``) and the toy's vocabulary. It has no ``attnprobe.json``: it is read as a
downloaded folder would be.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
if str(HERE.parents[1]) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(HERE.parents[1]))

from probe.models.clip_tokenizer import write_clip_tokenizer  # noqa: E402
from probe.models.loading import TOY_DIR  # noqa: E402
from probe.models.tiny import tiny_words  # noqa: E402
from probe.models.tiny_dit import tiny_t5_tokenizer  # noqa: E402

SD_REPLICAS = ("sd15", "sd21-base", "sd21", "sdxl-base")
DIT_REPLICAS = ("sd3-medium", "flux-dev")
TOY_REPLICA = "toy-sd15"
UNET_NAMES = (*SD_REPLICAS, TOY_REPLICA)
NAMES = (*SD_REPLICAS, *DIT_REPLICAS, TOY_REPLICA)
WEIGHT_STEM = {"diffusers": "diffusion_pytorch_model", "transformers": "model"}
TOKENIZER_FILES = ("vocab.json", "merges.txt")


def build_replica(name: str, out: str | Path) -> Path:
    """Write replica ``name`` into ``out/name``, replacing what is there.

    Args:
        name: one of :data:`NAMES`.
        out: the parent folder.

    Returns:
        The replica folder, loadable with ``probe.models.load_pipeline``.

    Raises:
        ValueError: an unknown name.

    Example:
        >>> folder = build_replica("sd15", "/tmp/replicas")
        >>> sorted(p.name for p in folder.iterdir())[:3]
        ['feature_extractor', 'model_index.json', 'safety_checker']
    """
    if name not in NAMES:
        raise ValueError(f"unknown replica {name!r}: choose from {', '.join(NAMES)}")
    folder = Path(out) / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if name == TOY_REPLICA:
        _dress_toy(folder)
    else:
        _build_random(name, folder)
    return folder


def real_config(name: str, rel: str) -> dict[str, Any]:
    """A real, full-size config of replica ``name`` (``rel`` e.g. ``"unet/config.json"``),
    without the ``_comment`` keys."""
    return _strip(_read(HERE / name / rel))


def _build_random(name: str, folder: Path) -> None:
    spec = _read(HERE / name / "tiny.json")
    vocab_sizes = {}  # text_encoder_N -> the length of tokenizer_N
    for tok in sorted(p.name for p in (HERE / name).glob("tokenizer*")):
        extra_ids = real_config(name, f"{tok}/tokenizer_config.json").get("extra_ids")
        size = (
            _write_tokenizer_files(folder / tok)
            if extra_ids is None
            else _write_t5_tokenizer_file(folder / tok, int(extra_ids))
        )
        vocab_sizes[tok.replace("tokenizer", "text_encoder")] = size
    for src in sorted((HERE / name).rglob("*.json")):
        rel = src.relative_to(HERE / name).as_posix()
        if rel != "tiny.json":
            vocab = vocab_sizes.get(rel.split("/")[0], 0)
            _write_config(folder / rel, real_config(name, rel), spec["sizes"].get(rel), vocab)
    _write_weights(folder, spec)
    _check_t5_vocab(folder, vocab_sizes)


def _dress_toy(folder: Path) -> None:
    """The toy's trained UNet, VAE and text encoder in SD 1.5's folder layout."""
    sd15 = "sd15"
    keep = ("model_index.json", "scheduler", "feature_extractor", "tokenizer", "safety_checker")
    spec = _read(HERE / sd15 / "tiny.json")
    for src in sorted((HERE / sd15).rglob("*.json")):
        rel = src.relative_to(HERE / sd15).as_posix()
        if rel.split("/")[0] in keep:
            _write_config(folder / rel, real_config(sd15, rel), spec["sizes"].get(rel), 0)
    _write_weights(
        folder, {**spec, "weights": {"safety_checker": spec["weights"]["safety_checker"]}}
    )
    for component in ("unet", "vae", "text_encoder"):
        shutil.copytree(TOY_DIR / component, folder / component)
        for weights in sorted((folder / component).glob("*.safetensors")):
            fp16 = weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors"))
            save_file(_as_variant(load_file(weights), "fp16"), fp16, metadata={"format": "pt"})
    model = _read(TOY_DIR / "tokenizer" / "tokenizer.json")["model"]
    _write_json(folder / "tokenizer" / "vocab.json", model["vocab"], indent=None)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "tokenizer" / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")


def _write_tokenizer_files(folder: Path) -> int:
    """``vocab.json`` and ``merges.txt`` of the toy's words; returns the vocabulary's size."""
    write_clip_tokenizer(tiny_words(), folder)
    for extra in folder.iterdir():
        if extra.name not in TOKENIZER_FILES:
            extra.unlink()  # the real tokenizer_config.json / special_tokens_map.json follow
    return len(_read(folder / "vocab.json"))


def _write_t5_tokenizer_file(folder: Path, extra_ids: int) -> int:
    """``tokenizer.json`` of the toy's words, T5-style; returns the length of the tokenizer
    the folder then loads as (the real ``tokenizer_config.json`` adds its ``extra_ids``)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tiny_t5_tokenizer(tiny_words()).save_pretrained(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(tmp) / "tokenizer.json", folder / "tokenizer.json")
    return len(_read(folder / "tokenizer.json")["model"]["vocab"]) + extra_ids


def _check_t5_vocab(folder: Path, vocab_sizes: dict[str, int]) -> None:
    """The T5 tokenizers load with the length their encoders' ``vocab_size`` was given."""
    from transformers import T5TokenizerFast

    for encoder, size in vocab_sizes.items():
        tok = folder / encoder.replace("text_encoder", "tokenizer")
        if (tok / "tokenizer.json").is_file():
            length = len(T5TokenizerFast.from_pretrained(str(tok)))
            if length != size:
                raise RuntimeError(f"{tok}: {length} tokens, but {encoder} was given {size}")


def _write_config(path: Path, config: dict, sizes: dict | None, vocab_size: int) -> None:
    if sizes:
        _replace_sizes(config, sizes, path.as_posix())
    if path.parent.name.startswith("text_encoder") and "vocab_size" in config:
        config["vocab_size"] = vocab_size
    _write_json(path, config)


def _replace_sizes(config: dict, sizes: dict, where: str) -> None:
    """Replace existing keys only, in place (nested dicts merge), keeping the file's key order."""
    for key, value in sizes.items():
        if key not in config:
            raise KeyError(
                f"{where}: tiny.json replaces {key!r}, which the real file does not have"
            )
        if isinstance(value, dict) and isinstance(config[key], dict):
            _replace_sizes(config[key], value, f"{where}:{key}")
        else:
            config[key] = value


def _write_weights(folder: Path, spec: dict) -> None:
    index = _read(folder / "model_index.json")
    for i, (component, variants) in enumerate(spec["weights"].items()):
        library, cls = index[component]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec["seed"] + i)
            model = _instantiate(library, cls, folder / component)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        state = _untied(state)
        stem = WEIGHT_STEM.get(library, "model")  # the safety checker is a transformers model
        shards = int(spec.get("shards", {}).get(component, 1))
        for variant in variants:
            name = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
            if shards > 1:
                _save_shards(_as_variant(state, variant), folder / component / name, shards)
            else:
                save_file(_as_variant(state, variant), folder / component / name, {"format": "pt"})


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state without tensors that share storage with an earlier one (T5's
    ``encoder.embed_tokens`` is its ``shared`` embedding), as ``save_pretrained`` writes it."""
    seen: set[int] = set()
    kept = {}
    for key, value in state.items():
        if value.data_ptr() not in seen:
            seen.add(value.data_ptr())
            kept[key] = value
    return kept


def _save_shards(state: dict[str, torch.Tensor], path: Path, shards: int) -> None:
    """``state`` in ``shards`` files named as ``save_pretrained`` names them
    (``<stem>-00001-of-00002.safetensors``), split in key order by bytes, and their
    ``<stem>.safetensors.index.json``."""
    stem = path.name.removesuffix(".safetensors")
    sizes = {k: v.numel() * v.element_size() for k, v in state.items()}
    total, budget = sum(sizes.values()), sum(sizes.values()) / shards
    weight_map: dict[str, str] = {}
    groups: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    done = 0
    for key, value in state.items():
        part = min(int(done // budget), shards - 1)
        groups[part][key] = value
        done += sizes[key]
    for i, group in enumerate(groups):
        if not group:
            raise RuntimeError(f"{path.parent.name}: too few tensors for {shards} shards")
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(group, path.with_name(name), {"format": "pt"})
        weight_map |= dict.fromkeys(group, name)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    _write_json(path.with_name(f"{path.name}.index.json"), index)


def _instantiate(library: str, cls: str, folder: Path) -> torch.nn.Module:
    """A randomly initialised model of the class ``model_index.json`` names, from its config."""
    if library == "diffusers":
        import diffusers

        model_cls = getattr(diffusers, cls)
        return model_cls.from_config(model_cls.load_config(str(folder)))
    if library == "stable_diffusion" and cls == "StableDiffusionSafetyChecker":
        from diffusers.pipelines.stable_diffusion.safety_checker import (
            StableDiffusionSafetyChecker,
        )
        from transformers import CLIPConfig

        return StableDiffusionSafetyChecker(CLIPConfig.from_pretrained(str(folder)))
    import transformers

    model_cls = getattr(transformers, cls)
    return model_cls(model_cls.config_class.from_pretrained(str(folder)))


def _as_variant(state: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    if variant != "fp16":
        return state
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def _strip(config: Any) -> Any:
    if isinstance(config, dict):
        return {k: _strip(v) for k, v in config.items() if not k.startswith("_comment")}
    return config


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def _write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def folder_mb(folder: Path) -> float:
    """Size of a folder's files in MB (10**6 bytes)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the replicas into")
    parser.add_argument("names", nargs="*", help=f"replicas to build (default: all of {NAMES})")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in NAMES]
    if unknown:
        parser.error(f"unknown replica(s) {', '.join(unknown)}: choose from {', '.join(NAMES)}")
    for name in args.names or NAMES:
        start = time.perf_counter()
        folder = build_replica(name, args.out)
        took = time.perf_counter() - start
        print(f"{folder}  {folder_mb(folder):.1f} MB  {took:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
