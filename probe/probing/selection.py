"""Turn probe results into the layers an edit should act on: a :class:`LayerSelection`.

FPE keeps the source's structure by giving the target the source's self-attention in some layers
for the first part of the steps. Two things decide which layers are right, and the probes measure
one of them directly:

- **low-leak** (default; for an attribute edit such as colour, probed on its own label): a layer
  whose *self*-attention already encodes the attribute would carry the source's colour into the
  target when replaced. So keep the layers whose self-attention selectivity for the label
  (accuracy − shuffled control, averaged over the replaced steps) is at most ``threshold``, and
  take the longest contiguous run of them (an edit acts on a range, like the paper's "4-14").
- **structure** (for an object label, e.g. the animal set): replaced layers should be those whose
  self-attention carries the object's layout. Take the contiguous range that maximises
  ``Σ (self selectivity − threshold)``: every layer in it adds more evidence than the threshold.

``within`` restricts the candidates first (for example to ``fpe``, the official code's layers,
query maps of at most 32×32 positions on SD, when a probe finds no leak anywhere and would
otherwise pick every layer, which the paper shows breaks the edit); a spec resolves against the
layer table the results were probed on (``ProbeResults.layer_table``, at the dataset's latent
size). The selection file is JSON with a top-level ``"layers"`` list, so any layer spec accepts
it (``--layers layers.json``), and the ``"layer_table"`` it was selected on.

Example:
    >>> sel = select_layers(ProbeResults.from_csv("runs/c/probe/results.csv"))
    >>> sel.save("layers.json"); resolve_layers(pipe.unet, "layers.json")
    [4, 5, 6, 7, 8, 9, 10, 11]
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probe.attention.layer_files import layers_from_json, layers_to_json
from probe.attention.layer_info import LayerInfo, LayerSpec
from probe.attention.layers import resolve_layers
from probe.attention.steps import fraction_steps
from probe.probing.probes import ProbeResults

RULES = ("low-leak", "structure")


@dataclass
class LayerSelection:
    """The layers an edit acts on, with the rule and the evidence that chose them.

    Attributes:
        layers: layer indices (execution order).
        step_fraction: the fraction of the first steps the edit acts in.
        rule: the rule's name (see the module docstring).
        evidence: the numbers behind the choice (per-layer scores, threshold, label, ...).
        model: the model the probes ran on.
        layer_table: the layer table the layers were selected on (the probed dataset's, at
            its latent size); empty when unknown.
    """

    layers: list[int]
    step_fraction: float = 0.8
    rule: str = "low-leak"
    evidence: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    layer_table: list[LayerInfo] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"LayerSelection(layers={self.layers}, step_fraction={self.step_fraction}, "
            f"rule={self.rule!r}, model={self.model!r})"
        )

    def save(self, path: str | Path) -> Path:
        """Write the selection as JSON (top-level ``layers``, ``step_fraction``, ``rule``, ...)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self) | {"layer_table": layers_to_json(self.layer_table)}
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LayerSelection:
        """Read a file written by :meth:`save`.

        Raises:
            ValueError: the file is not a layer selection.
        """
        try:
            data = json.loads(Path(path).read_text())
            return cls(
                layers=[int(i) for i in data["layers"]],
                step_fraction=float(data.get("step_fraction", 0.8)),
                rule=str(data.get("rule", "")),
                evidence=dict(data.get("evidence", {})),
                model=str(data.get("model", "")),
                layer_table=layers_from_json(data.get("layer_table") or []),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f"{path} is not a layer selection (JSON with a 'layers' list): {err}; "
                "make one with `attnprobe select`"
            ) from err


def layer_scores(
    results: ProbeResults, kind: str, column: str, step_fraction: float
) -> dict[int, float]:
    """Per layer: ``column`` of ``kind`` averaged over the first ``step_fraction`` of the
    probed steps, counted by the one rule of every step fraction,
    :func:`probe.attention.steps.fraction_steps` (``int(f * steps)``, floored as the official
    code floors it: 0.8 of 4 probed steps is 3).

    Raises:
        ValueError: no rows of ``kind``, or a fraction that covers none of the probed steps.
    """
    layers, steps, values = results.grid(kind, column)
    if not layers:
        raise ValueError(f"the results have no {kind!r} rows: probe a dataset with --kinds {kind}")
    n = len(fraction_steps(step_fraction, len(steps)))
    if n == 0:
        raise ValueError(
            f"step_fraction={step_fraction:g} covers no step of the {len(steps)} probed "
            f"(int({step_fraction:g} x {len(steps)}) = 0): use at least {1 / len(steps):.3g}"
        )
    with warnings.catch_warnings():  # a control that was not run is all nan: stays nan
        warnings.simplefilter("ignore", RuntimeWarning)
        return {layer: float(np.nanmean(values[i, :n])) for i, layer in enumerate(layers)}


def longest_run(layers: Sequence[int], middle: float) -> list[int]:
    """The longest run of consecutive indices in ``layers`` (ties: nearest to ``middle``)."""
    runs: list[list[int]] = []
    for i in sorted(layers):
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    if not runs:
        return []
    return max(runs, key=lambda r: (len(r), -abs((r[0] + r[-1]) / 2 - middle)))


def best_range(scores: dict[int, float]) -> list[int]:
    """The contiguous layers (in index order) with the largest sum of ``scores`` (Kadane)."""
    layers = sorted(scores)
    best, best_sum, start, running = [], -math.inf, 0, 0.0
    for i, layer in enumerate(layers):
        if running <= 0 or (i and layers[i - 1] != layer - 1):
            start, running = i, 0.0
        running += scores[layer]
        if running > best_sum:
            best_sum, best = running, layers[start : i + 1]
    return best if best_sum > 0 else []


def select_layers(
    results: ProbeResults,
    rule: str = "low-leak",
    step_fraction: float = 0.8,
    threshold: float = 0.1,
    within: LayerSpec = None,
    model: str = "",
) -> LayerSelection:
    """Choose the layers for an edit from probe results (see the module docstring).

    Args:
        results: probe results with ``self`` rows (``cross`` rows, if present, are reported).
        rule: ``"low-leak"`` or ``"structure"``.
        step_fraction: the fraction of first steps the edit acts in; scores average those steps.
        threshold: selectivity bound (low-leak: at most; structure: margin to exceed).
        within: candidate layers, any layer spec (``"fpe"``, ``"2-12"``, a list of
            indices), resolved against ``results.layer_table`` (default: every probed layer).
        model: the model's name, stored in the selection.

    Returns:
        A :class:`LayerSelection`.

    Raises:
        ValueError: an unknown rule, no layer satisfies it (the message says what to change),
            or a ``within`` spec on results without a layer table.

    Example:
        >>> select_layers(results, rule="structure", threshold=0.05).layers
    """
    if rule not in RULES:
        raise ValueError(f"rule {rule!r} is not one of {', '.join(RULES)}")
    if not 0 < step_fraction <= 1:
        raise ValueError(f"step_fraction={step_fraction}: use a fraction in (0, 1], e.g. 0.8")
    selfsel = layer_scores(results, "self", "selectivity", step_fraction)
    allowed = resolve_within(results, within)
    candidates = {k: v for k, v in selfsel.items() if allowed is None or k in set(allowed)}
    if not candidates:
        raise ValueError(f"no probed layer is within {within!r} ({allowed}): widen --within")
    if rule == "low-leak":
        ok = [k for k, v in candidates.items() if v <= threshold]
        chosen = longest_run(ok, middle=(min(selfsel) + max(selfsel)) / 2)
    else:
        chosen = best_range({k: v - threshold for k, v in candidates.items()})
    if not chosen:
        lowest = sorted(candidates.items(), key=lambda kv: kv[1])[:3]
        raise ValueError(
            f"no layer satisfies rule {rule!r} with threshold {threshold} (self selectivity of "
            f"the nearest: {', '.join(f'L{k}={v:.2f}' for k, v in lowest)}): change --threshold "
            "or --rule"
        )
    evidence = _evidence(results, rule, threshold, step_fraction, selfsel, allowed)
    if isinstance(within, str | Path):
        evidence["within_spec"] = str(within)
    return LayerSelection(chosen, step_fraction, rule, evidence, model, list(results.layer_table))


def select_below_median(
    results: ProbeResults, step_fraction: float = 0.8, within: LayerSpec = None, model: str = ""
) -> LayerSelection:
    """The low-leak rule at a threshold relative to the model: the median self selectivity
    of the candidate layers, so the longest run among the half of the layers whose
    self-attention carries the label least. For a model on which every layer's self-attention
    carries the label above an absolute threshold (a DiT's image→image maps: the image tokens
    share one stream with the text from the first block on), where :func:`select_layers` finds
    nothing.

    Returns:
        A :class:`LayerSelection` with rule ``low-leak (median)``, the median in its evidence.

    Raises:
        ValueError: as :func:`select_layers`.

    Example:
        >>> select_below_median(results, within="all").layers  # toy-flux, colour probes
    """
    selfsel = layer_scores(results, "self", "selectivity", step_fraction)
    allowed = resolve_within(results, within)
    values = [v for k, v in selfsel.items() if allowed is None or k in set(allowed)]
    if not values:
        raise ValueError(f"no probed layer is within {within!r} ({allowed}): widen --within")
    threshold = float(np.median(values))
    selection = select_layers(results, "low-leak", step_fraction, threshold, within, model)
    selection.rule = "low-leak (median)"
    selection.evidence["threshold_rule"] = (
        f"the median self selectivity of the candidate layers ({threshold:.3f})"
    )
    return selection


def resolve_within(results: ProbeResults, within: LayerSpec) -> list[int] | None:
    """``within`` as layer indices, resolved against the results' layer table.

    Raises:
        ValueError: a spec other than a list of indices, on results without a layer table.
    """
    if within is None:
        return None
    if results.layer_table:
        return resolve_layers(results.layer_table, within)
    if isinstance(within, Sequence) and not isinstance(within, str):
        ints = [i for i in within if isinstance(i, int) and not isinstance(i, bool)]
        if len(ints) == len(within):
            return sorted(set(ints))
    raise ValueError(
        f"within={within!r} needs the layer table these results were probed on, and they have "
        "none (results.csv without results.layers.json, from before tables were saved): rerun "
        "`attnprobe probe`, or give the layers as indices, e.g. 2-12 -> [2, ..., 12]"
    )


def _evidence(
    results: ProbeResults,
    rule: str,
    threshold: float,
    step_fraction: float,
    selfsel: dict[int, float],
    within: Sequence[int] | None,
) -> dict[str, Any]:
    per_layer: dict[str, dict[str, float]] = {
        str(k): {"self_selectivity": round(v, 4)} for k, v in selfsel.items()
    }
    columns = [("self", "acc_mean"), ("self", "random_model_acc")]
    if results.select("cross"):
        columns += [("cross", "acc_mean"), ("cross", "selectivity")]
    for kind, column in columns:
        for k, v in layer_scores(results, kind, column, step_fraction).items():
            if not math.isnan(v):
                per_layer.setdefault(str(k), {})[f"{kind}_{column}"] = round(v, 4)
    return {
        "label": results.label,
        "rule": rule,
        "threshold": threshold,
        "scores_over": f"the first {step_fraction:g} of steps",
        "within": list(within) if within is not None else "all",
        "per_layer": per_layer,
    }
