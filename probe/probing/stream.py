"""Probing a dataset larger than memory: features built and probed a few layers at a time.

:func:`probe_dataset` plans the features' size from the first sample. When they fit the
``memory`` budget it builds them all and probes (:func:`~probe.probing.probes.run_probes`, one
read of every file). When they do not, it first verifies every sample file (checksums, one file in
memory at a time), then, for each group of layers that fits, reads only those layers' tensors
from the safetensors files, probes them and lets them go. The results are the same either way:
the splits depend on labels, groups and the config only, and every cell is fitted alone.

Example:
    >>> results = probe_dataset(AttentionDataset("runs/big"), "colour", memory=2 * 2**30)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from probe.probing.features import (
    FeatureOptions,
    FeatureSet,
    available_keys,
    build_features,
    sample_features,
)
from probe.probing.probes import ProbeConfig, run_probes
from probe.probing.results import ProbeResults
from probe.recording.recorder import format_bytes
from probe.recording.store import AttentionDataset, CorruptSampleError, verify_file

BYTES_PER_FEATURE = 4  # float32


@dataclass(frozen=True)
class FeaturePlan:
    """What the features of a dataset take in memory.

    Attributes:
        samples: rows of every cell.
        layer_bytes: layer → bytes of its cells' features over all samples.
    """

    samples: int
    layer_bytes: dict[int, int]

    @property
    def total(self) -> int:
        return sum(self.layer_bytes.values())

    def groups(self, budget: int) -> list[list[int]]:
        """Consecutive layers in groups whose features fit ``budget`` bytes.

        Raises:
            MemoryError: one layer alone does not fit.
        """
        groups: list[list[int]] = []
        used = budget + 1
        for layer, size in sorted(self.layer_bytes.items()):
            if size > budget:
                raise MemoryError(
                    f"the features of layer {layer} take {format_bytes(size)} over "
                    f"{self.samples} samples, more than the memory budget of "
                    f"{format_bytes(budget)}: probe fewer steps (--steps), one kind (--kinds), "
                    "smaller cross maps (--size) or fewer self features (--self-features svd:4), "
                    "or raise --memory"
                )
            if used + size > budget:
                groups.append([])
                used = 0
            groups[-1].append(layer)
            used += size
        return groups


def plan_features(
    dataset: AttentionDataset,
    label: str,
    layers: Iterable[int] | None = None,
    steps: Iterable[int] | None = None,
    kinds: Iterable[str] | None = None,
    options: FeatureOptions | None = None,
) -> FeaturePlan:
    """The size of :func:`build_features`' output, from the first sample's feature sizes."""
    if not len(dataset):
        return FeaturePlan(0, {})
    options = options or FeatureOptions()
    maps = dataset.load(0)
    keys = available_keys(maps, layers, steps, kinds)
    word = dataset.entries[0]["label_words"][label]
    sizes: dict[int, int] = {}
    for (layer, _, _), vec in sample_features(maps, word, keys, options).items():
        sizes[layer] = sizes.get(layer, 0) + vec.numel() * BYTES_PER_FEATURE * len(dataset)
    return FeaturePlan(len(dataset), sizes)


def verify_all(dataset: AttentionDataset, progress: bool = True) -> None:
    """Check every sample file of ``dataset`` against its index entry.

    Raises:
        CorruptSampleError: naming the first bad files and how to redo them.
    """
    bad = {}
    for entry in tqdm(dataset.entries, disable=not progress, desc="verify"):
        problem = verify_file(dataset.root, entry)
        if problem is not None:
            bad[entry["file"]] = problem
    if bad:
        first = "; ".join(f"{f}: {p}" for f, p in list(bad.items())[:3])
        raise CorruptSampleError(
            f"{len(bad)} sample file(s) of {dataset.root} do not verify ({first}): rerun the "
            f"same `attnprobe record ... --out {dataset.root}` to record them again"
        )


def probe_dataset(
    dataset: AttentionDataset,
    label: str,
    config: ProbeConfig | None = None,
    control: AttentionDataset | None = None,
    *,
    layers: Iterable[int] | None = None,
    steps: Iterable[int] | None = None,
    kinds: Iterable[str] | None = None,
    options: FeatureOptions | None = None,
    memory: int | None = None,
    jobs: int = 1,
    progress: bool = True,
) -> ProbeResults:
    """Probe every cell of ``dataset``, within ``memory`` bytes of features.

    Args:
        dataset: a recorded dataset; ``control`` the same set on a random model (optional).
        label: the label probed.
        config: the probe settings (default :class:`ProbeConfig`).
        layers, steps, kinds, options: which cells and features, as :func:`build_features`.
        memory: bytes the features of the dataset and the control may take at once (``None``:
            no limit, everything in memory).
        jobs: parallel processes of :func:`run_probes`.
        progress: show progress bars.

    Returns:
        The same :class:`ProbeResults` as building every feature at once.

    Raises:
        MemoryError: one layer's features do not fit ``memory``.
        CorruptSampleError: a sample file does not verify.
    """
    select = {"steps": steps, "kinds": kinds, "options": options}
    plan = plan_features(dataset, label, layers, **select)  # type: ignore[arg-type]
    scale = 1.0
    if control is not None and len(control):
        scale += len(control) / max(len(dataset), 1)
    budget = None if memory is None else int(memory / scale)
    if budget is None or plan.total <= budget:
        feats = build_features(dataset, label, layers, progress=progress, **select)  # type: ignore[arg-type]
        ctrl = _control(control, label, layers, select, progress, partial=False)
        return run_probes(feats, config, ctrl, jobs=jobs, progress=progress)
    groups = plan.groups(budget)
    for data in (dataset, control):
        if data is not None:
            verify_all(data, progress)
    parts = []
    for group in tqdm(groups, disable=not progress, desc="layer groups"):
        feats = build_features(dataset, label, group, progress=False, partial=True, **select)  # type: ignore[arg-type]
        ctrl = _control(control, label, group, select, False, partial=True)
        parts.append(run_probes(feats, config, ctrl, jobs=jobs, progress=False))
        del feats, ctrl
    return merge_results(parts)


def _control(
    control: AttentionDataset | None,
    label: str,
    layers: Iterable[int] | None,
    select: dict[str, Any],
    progress: bool,
    partial: bool,
) -> FeatureSet | None:
    if control is None:
        return None
    return build_features(control, label, layers, progress=progress, partial=partial, **select)


def merge_results(parts: list[ProbeResults]) -> ProbeResults:
    """One :class:`ProbeResults` of several runs over disjoint cells of one dataset."""
    rows = sorted((r for p in parts for r in p.rows), key=lambda r: (r.kind, r.layer, r.step))
    return ProbeResults(rows, parts[0].label, list(parts[0].layer_table))
