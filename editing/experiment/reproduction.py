"""``attnprobe reproduce``: the paper's experiment end to end, into one folder and one report.

Stages, in order (each skipped when a previous run in the same folder finished it)::

    record   probe datasets (colour_car, animal_park; a random-model control)  data/<set>/
    probe    linear probes per (layer, step, kind) with controls               probe/<set>/
    select   layers for FPE from the colour probes                             selection.json
    sweep    colour edits over layer ranges, self- and cross-replacement      sweep/, sampling.json
             animal edits over the presets (a category edit changes shape)  sweep_animal/
    inject   DiTs: Stable Flow's K/V injection in vital / non-vital / all     inject/,
             blocks (its ablation; a UNet writes why not)                   inject_animal/
    figures  token heat maps, SVD components, probe maps, edit grid           figures/
    report   one self-contained page                                          report.html

``record`` and ``sweep`` resume inside a stage too (the dataset store and ``sweep.csv`` skip
what is on disk). A folder keeps its settings in ``reproduce.json``; rerunning with other
settings is refused, so a report never mixes two runs. ``sampling.json`` says what the edits
sampled with (DDIM from the model's scheduler config, eta 0; defaults resolved) and which
scheduler recording ran on (the model's own).

    from editing.experiment.reproduction import ReproduceConfig, reproduce
    reproduce("runs/demo", ReproduceConfig.preset("toy", quick=True))
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from editing.experiment.probe_stages import ANIMAL_SELECTION
from editing.experiment.settings import ReproduceConfig, RunState
from editing.sweep.ranges import pick_pairs
from probe.families import family_of
from probe.recording.folders import check_folder_settings
from probe.shards import ShardGroup

__all__ = ["ReproduceConfig", "Reproduction", "RunState", "pick_pairs", "reproduce"]

STAGES = ("record", "probe", "select", "sweep", "inject", "figures", "report")
MODEL_STAGES = ("record", "sweep", "inject", "figures")  # the stages that run the model
SHARDED_STAGES = ("record", "sweep", "inject")  # every shard runs its part (the rest: shard 0)
PROBE_SETS = {"colour_car": "colour", "animal_park": "animal"}
SETTINGS = "reproduce.json"
SAMPLING = "sampling.json"  # the schedulers and sampling defaults the run used
SKIPPED = "skipped_ranges.json"  # range presets the model's family refuses, and why
CROSS_ON_JOINT = (
    "replacing cross-attention is a UNet method: a DiT's image→text attention is part of one "
    "joint softmax, and no published edit replaces it (the DiT FPE keeps the target's own text "
    "columns), so the claim on cross-attention edits is left inconclusive"
)


class Reproduction:
    """The stages of one ``reproduce`` run in folder ``out``.

    Args:
        out: the run's folder (created; a rerun resumes it).
        config: what to run.
        progress: show progress bars.
    """

    def __init__(
        self, out: str | Path, config: ReproduceConfig, progress: bool = True,
        workers: int | None = None, group: ShardGroup | None = None,
        device: Any = None, offload: str = "none",
    ) -> None:  # fmt: skip
        self.out = Path(out)
        self.config = config
        self.progress = progress
        self.workers = workers
        self.group = group or ShardGroup(folder=self.out)
        self.device, self.offload = device, offload
        self._pipe: Any = None
        self._pool: Any = None

    def pool(self) -> Any:
        """Worker processes holding the model (:class:`probe.workers.ModelPool`), started at
        first use, or ``None``: one worker (``workers=1``, one CPU core) or a model not on the
        CPU runs in this process."""
        from probe.workers import ModelPool

        workers = self.worker_count()
        plain = self.config.dtype in (None, "float32") and self.offload == "none"  # as workers load
        if self._pool is None and workers > 1 and plain and self.pipe.device.type == "cpu":
            self._pool = ModelPool(self.config.model, workers)
        return self._pool

    def worker_count(self) -> int:
        """``workers``, or by default one per CPU core that the model's copies fit in half the
        memory with (1 for a ``quick`` run: starting the workers takes longer than its work)."""
        from probe.workers import affordable_workers, cpu_workers

        if self.workers is not None:
            return cpu_workers(self.workers)
        if self.config.quick or self.group.sharded:  # a shard is one process of many
            return 1
        return affordable_workers(self.pipe)

    @property
    def pipe(self) -> Any:
        """The model, loaded at first use (a finished run never loads it)."""
        if self._pipe is None:
            from probe.models import load_pipeline

            self._pipe = load_pipeline(
                self.config.model, device=self.device, dtype=self.config.dtype,
                offload=self.offload,
            )  # fmt: skip
        return self._pipe

    def lists(self) -> str | None:
        """The word lists of the model's toy world (:func:`probe.toy.world.world.lists_name`): a toy
        trained on world v2 is probed and edited on v2's sixteen colours; ``None`` (the default
        lists) for the shipped toy and for real checkpoints."""
        from probe.toy.world.world import lists_name, world_of

        return lists_name(world_of(self.pipe))

    def num_steps(self) -> int:
        from probe.models import generation_defaults

        return self.config.num_steps or int(generation_defaults(self.pipe)["num_inference_steps"])

    def save_sampling(self) -> None:
        """Write ``sampling.json``: what the edits sample with (DDIM from the model's config,
        eta 0, defaults resolved) and the model's own scheduler, which recording runs on."""
        from editing.sampling import sampling_settings
        from probe.models.schedulers import scheduler_settings

        said = {
            "editing": sampling_settings(self.pipe, self.num_steps()),
            "recording_scheduler": scheduler_settings(self.pipe.scheduler),
        }
        (self.out / SAMPLING).write_text(json.dumps(said, indent=2) + "\n")

    def probe_sets(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Set name → (label, seeds), for the sets this run records."""
        seeds = {"colour_car": self.config.colour_seeds, "animal_park": self.config.animal_seeds}
        return {name: (label, seeds[name]) for name, label in PROBE_SETS.items() if seeds[name]}

    # -- stages --------------------------------------------------------------------------------
    def record(self) -> None:
        """Record every probe set (and the random-model control of the colour set)."""
        from probe.prompts.templates import load_template
        from probe.recording.dataset import record_dataset
        from probe.recording.pooled import record_on_pool
        from probe.recording.random_control import random_init_like

        steps = list(range(0, self.num_steps(), self.config.step_stride))
        jobs: list[tuple[str, Any, tuple[int, ...], int | None]] = [
            (name, self.pipe, seeds, None) for name, (_, seeds) in self.probe_sets().items()
        ]
        if self.config.random_control and self.config.colour_seeds:
            control = None if self.pool() is not None else random_init_like(self.pipe, seed=0)
            jobs.append(("colour_car_random", control, self.config.colour_seeds, 0))
        if self.pool() is not None and not self.group.sharded:
            record_on_pool(self.pool(), self.out / "data", jobs, self._record_args(steps),
                           self.progress, self.lists())  # fmt: skip
            return
        for name, pipe, seeds, random_init in jobs:
            record_dataset(
                pipe, load_template(name.removesuffix("_random"), self.lists()), list(seeds),
                self.out / "data" / name, random_init=random_init, progress=self.progress,
                shard=(self.group.index, self.group.count), **self._record_args(steps),
            )  # fmt: skip

    def _record_args(self, steps: list[int]) -> dict[str, Any]:
        return {"model": self.config.model, "steps": steps, "self_reduce": "svd:8",
                "num_steps": self.num_steps()}  # fmt: skip

    def probe(self) -> None:
        """Probe every recorded set (:mod:`editing.experiment.probe_stages`)."""
        from editing.experiment.probe_stages import probe_recorded_sets

        labels = {name: label for name, (label, _) in self.probe_sets().items()}
        probe_recorded_sets(self.out, labels, self.config, self.worker_count(), self.progress)

    def select(self) -> None:
        """FPE's layers from the probes, never loading the model
        (:func:`~editing.experiment.probe_stages.select_from_probes`)."""
        from editing.experiment.probe_stages import select_from_probes

        select_from_probes(self.out, self.config)

    def edit_pairs(self) -> tuple[list[Any], list[Any]]:
        """The colour and the animal edit pairs of the sweep (no animal pairs: ``[]``)."""
        from editing.sweep.ranges import select_pairs
        from probe.prompts.templates import load_edit_pairs

        colours = pick_pairs(
            load_edit_pairs("colour_edits", self.lists()).pairs, self.config.sources,
            self.config.targets_per_source,
        )  # fmt: skip
        if self.config.animal_pairs <= 0:
            return colours, []
        pairs = load_edit_pairs("animal_edits", self.lists()).pairs
        animals = select_pairs(pairs, self.config.animal_pairs)
        return colours, animals

    def check_words(self) -> None:
        """Refuse the run before anything is written if one of its prompts (probe sets, edit
        pairs, figures) has a word the model does not know (the toy's closed vocabulary)."""
        from editing.experiment.figures import EDIT_SOURCE, EDIT_TARGETS, SAMPLE_PROMPT
        from probe.models.vocabulary import check_known_words
        from probe.prompts.templates import load_template

        prompts = [item.prompt for name in self.probe_sets()
                   for item in load_template(name, self.lists()).items]  # fmt: skip
        colours, animals = self.edit_pairs()
        prompts += [p for pair in [*colours, *animals] for p in (pair.source, pair.target)]
        check_known_words(self.pipe, [*prompts, SAMPLE_PROMPT, EDIT_SOURCE, *EDIT_TARGETS])

    def sweep(self) -> None:
        """Colour edits with self-attention replaced in each range, and cross in a few; then
        animal edits over the presets, self-attention and cross ``all``."""
        from editing.sweep.run import sweep

        if self.group.main:
            self.save_sampling()
        pairs, animals = self.edit_pairs()
        ranges = self.sweep_ranges(bool(animals))
        common = {**self.sweep_args(), "out": self.out / "sweep"}
        selection = str(self.out / "selection.json")
        sweep(self.pipe, pairs, [*ranges["self_ranges"], selection], kinds=("self",), **common)
        if ranges["cross_ranges"]:
            sweep(self.pipe, pairs, ranges["cross_ranges"], kinds=("cross",), **common)
        if animals:
            common["out"] = self.out / "sweep_animal"
            animal_selection = self.out / ANIMAL_SELECTION  # DiTs: probe-selected blocks
            extra = [str(animal_selection)] if animal_selection.is_file() else []
            sweep(self.pipe, animals, [*ranges["animal_ranges"], *extra], kinds=("self",),
                  **common)  # fmt: skip
            if ranges["cross_ranges"]:
                sweep(self.pipe, animals, ["all"], kinds=("cross",), **common)

    def sweep_args(self) -> dict[str, Any]:
        """The keywords of :func:`editing.sweep.run.sweep` every sweep of the run shares."""
        from editing.scoring.clip_scorer import clip_scorer

        scorer = clip_scorer(self.config.clip, self.config.dino, self.pipe.device)
        return {
            "seeds": list(self.config.sweep_seeds), "num_steps": self.num_steps(),
            "model_name": self.config.model, "progress": self.progress,
            **({"scorer": scorer} if scorer is not None else {}),
            "pool": self.pool() if scorer is None else None,  # a CLIP scorer stays here
            "group": self.group,
        }  # fmt: skip

    def inject(self) -> None:
        """Stable Flow's ablation on a DiT (:mod:`editing.experiment.injection`): K/V
        injection in the vital, non-vital and all blocks on the sweep's edit pairs; a UNet, or
        a DiT without vital blocks, writes why not."""
        from editing.experiment.injection import run_injection

        pairs, animals = self.edit_pairs()
        run_injection(self.pipe, self.out, pairs, animals, self.sweep_args())

    def sweep_ranges(self, animals: bool) -> dict[str, list[str]]:
        """The configured ranges without the presets the model's family refuses (``paper`` on
        SDXL); writes those presets and the reason to ``skipped_ranges.json`` (for the report)."""
        from editing.sweep.ranges import drop_refused
        from probe.models import run_layer_table

        table = run_layer_table(self.pipe)
        names = ("self_ranges", "cross_ranges", *(("animal_ranges",) if animals else ()))
        kept: dict[str, list[str]] = {"animal_ranges": []}
        skipped: dict[str, dict[str, Any]] = {}
        for name in names:
            kept[name], left_out = drop_refused(getattr(self.config, name), table)
            for preset, why in left_out.items():
                skipped.setdefault(preset, {"reason": why, "sweeps": []})["sweeps"].append(name)
        if family_of(self.pipe).joint_attention:  # no cross-attention replacement on a DiT yet
            skipped["cross"] = {"reason": CROSS_ON_JOINT, "sweeps": ["cross_ranges"]}
            kept["cross_ranges"] = []
        if self.group.main:
            (self.out / SKIPPED).write_text(json.dumps(skipped, indent=2) + "\n")
        return kept

    def figures(self) -> None:
        """Token heat maps, SVD components and an edit grid into ``figures/``."""
        from editing.experiment.figures import make_figures

        if self.pool() is not None:  # one torch thread there: no waiting on a busy machine
            self.pool().submit(make_figures, self.out, self.num_steps()).result()
        else:
            make_figures(self.pipe, self.out, self.num_steps())

    def report(self) -> None:
        """Write ``report.html``."""
        from editing.experiment.report import write_report_html

        write_report_html(self.out, self.config, RunState.load(self.out).done)

    # -- running -------------------------------------------------------------------------------
    def run(self, say: Callable[[str], None] = print) -> Path:
        """Run the unfinished stages in order; returns the report's path.

        Sharded (``group``), every shard records and edits its part of the ``record``,
        ``sweep`` and ``inject`` stages; shard 0 alone probes, selects, draws and reports,
        and writes ``run_state.json``; the shards meet after every stage.
        """
        group = self.group
        state = RunState.load(self.out)
        if any(stage not in state.done for stage in MODEL_STAGES):
            self.check_words()
        check_folder_settings(
            self.out, SETTINGS, self.config.to_json(), "a reproduce run", {"dtype": None}
        )  # a run from before dtype was a setting
        for i, stage in enumerate(STAGES, start=1):
            head = f"[{i}/{len(STAGES)}] {stage}"
            if stage in state.done and stage != "report":
                say(f"{head}: done before ({state.done[stage]:.0f} s), skipped")
                continue
            mine = group.main or stage in SHARDED_STAGES
            say(f"{head} ..." if mine else f"{head}: shard 0 runs it, waiting")
            start = time.perf_counter()
            try:
                if mine:
                    getattr(self, stage)()
                group.barrier(f"reproduce-{stage}")
            except BaseException:
                self.close()
                raise
            seconds = time.perf_counter() - start
            if group.main:
                state.finish(stage, seconds)
            say(f"{head}: {seconds:.0f} s")
        self.close()
        return self.out / "report.html"

    def close(self) -> None:
        """Stop the worker processes (if any were started)."""
        if self._pool is not None:
            self._pool.close(cancel=True)
            self._pool = None


def reproduce(
    out: str | Path,
    config: ReproduceConfig,
    progress: bool = True,
    workers: int | None = None,
    group: ShardGroup | None = None,
    say: Callable[[str], None] = print,
    device: Any = None,
    offload: str = "none",
) -> Path:
    """Run (or resume) the whole experiment into ``out`` and write ``report.html``.

    Args:
        out: the run's folder.
        config: :meth:`ReproduceConfig.preset` or your own.
        progress: show progress bars.
        workers: processes that record, probe and edit side by side, one torch thread each
            (:mod:`probe.workers`; default: one per CPU core, 1 for a quick run; 1: all in
            this process; a shard of ``group`` runs one unless told).
        group: run as one shard of several processes (:class:`probe.shards.ShardGroup`;
            see :meth:`Reproduction.run`).
        say: where each stage's progress line goes.
        device, offload: where the model computes (default: the CPU) and diffusers' CPU
            offload onto it (``load_pipeline``'s); its dtype is ``config.dtype``.

    Returns:
        The path of ``report.html``.

    Raises:
        SettingsMismatchError: ``out`` holds a run with other settings (a ValueError).
        FileNotFoundError: the model does not exist.
        UnknownWordError: a prompt of the run has a word outside the model's closed
            vocabulary (the toy's; see :mod:`probe.models.vocabulary`), before anything is
            written.

    Example:
        >>> reproduce("runs/demo", ReproduceConfig.preset("tiny", quick=True))
        PosixPath('runs/demo/report.html')
    """
    return Reproduction(out, config, progress, workers, group, device, offload).run(say)
