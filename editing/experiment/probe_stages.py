"""``reproduce``'s probe and select stages: probes on the recorded sets, and FPE's layers from
them. Neither loads the model: features come from the datasets in ``data/``, layer specs
resolve against the table the probes ran on.

    probe_recorded_sets(out, {"colour_car": "colour"}, config, jobs=2, progress=True)
    select_from_probes(out, config)            # selection.json (and selection_animal.json)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from editing.experiment.settings import ReproduceConfig

log = logging.getLogger(__name__)

ANIMAL_SELECTION = "selection_animal.json"  # DiTs: blocks selected from the animal probes


def probe_recorded_sets(
    out: Path, labels: dict[str, str], config: ReproduceConfig, jobs: int, progress: bool
) -> None:
    """Probe every recorded set (name → label), with its random-model control when one was
    recorded; write ``probe/<set>/results.csv`` and its figures."""
    from probe.probing.features import build_features
    from probe.probing.probes import ProbeConfig, run_probes
    from probe.recording.store import AttentionDataset
    from probe.viz.probe_figures import save_probe_figures

    probe_config = ProbeConfig(folds=config.folds, max_iter=config.probe_max_iter)
    for name, label in labels.items():
        features = build_features(AttentionDataset(out / "data" / name), label, progress=progress)
        control = None
        control_dir = out / "data" / f"{name}_random"
        if (control_dir / "index.jsonl").is_file():
            control = build_features(AttentionDataset(control_dir), label, progress=progress)
        results = run_probes(
            features, probe_config, control, jobs=jobs, progress=progress
        )  # probes fit on the CPU, whatever the model's device
        results.to_csv(out / "probe" / name / "results.csv")
        save_probe_figures(results, out / "probe" / name)


def select_from_probes(out: Path, config: ReproduceConfig) -> None:
    """Choose FPE's layers from the colour probes (low-leak rule); fall back to ``fpe``.

    On a DiT, where every block's image→image maps carry the label above the rule's
    threshold, the threshold is the blocks' median (:func:`select_below_median`), and the
    animal probes choose the animal sweep's blocks the same way (``selection_animal.json``).
    """
    from probe.families import family_of_table

    colour = _probe_results(out, "colour_car")
    joint = family_of_table(colour.layer_table).joint_attention
    _select(colour, config, joint, fallback=True).save(out / "selection.json")
    animal_csv = out / "probe" / "animal_park" / "results.csv"
    if joint and animal_csv.is_file():
        try:
            animal = _select(_probe_results(out, "animal_park"), config, joint, fallback=False)
        except ValueError as err:
            log.warning("no animal selection (%s)", err)
        else:
            animal.save(out / ANIMAL_SELECTION)


def _probe_results(out: Path, name: str) -> Any:
    from probe.probing.probes import ProbeResults
    from probe.recording.store import AttentionDataset

    results = ProbeResults.from_csv(out / "probe" / name / "results.csv")
    if not results.layer_table:  # probed before tables were saved: the dataset has it
        results.layer_table = AttentionDataset(out / "data" / name).load(0).layers
    return results


def _select(results: Any, config: ReproduceConfig, joint: bool, fallback: bool) -> Any:
    from probe.attention.layers import resolve_layers
    from probe.probing.selection import LayerSelection, select_below_median, select_layers

    within = None if config.within == "all" else config.within
    model = config.model
    try:
        return select_layers(results, within=within, model=model)
    except ValueError as err:
        if joint:
            log.warning("%s; a DiT: threshold at the blocks' median", err)
            return select_below_median(results, within=within, model=model)
        if not fallback:
            raise
        log.warning("no probe selection (%s); using the 'fpe' preset", err)
        table = results.layer_table
        return LayerSelection(
            resolve_layers(table, "fpe"), rule="fallback: fpe preset",
            evidence={"reason": str(err)}, model=model, layer_table=list(table),
        )  # fmt: skip
