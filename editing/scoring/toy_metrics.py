"""Edit metrics in the toy world, where the judges are exact, and image metrics for any model.

Toy world (:func:`score_edit`), for one source image and its edit:

- **edit success**: the judged colour (colour edits) or category (animal edits) of the edited
  object equals the target's label;
- **structure**: IoU of the source's and the edit's object masks, and the judges' shape
  distance of the two masks (0 = the same shape);
- **source shift** (colour edits): how far the edited object's colour moved from the target's
  palette colour (0) toward the source's (1); a continuous view of success;
- **background preservation**: PSNR and mean absolute difference outside the union of the two
  object masks, grown by ``edge`` pixels so anti-aliased or blurred object edges do not count;
- whether an object was found at all in each image.

The image metrics it uses (PSNR, mean absolute difference, SSIM) work on any pair of images
and live in :mod:`editing.scoring.images`; CLIP and DINO metrics for real checkpoints in
:mod:`editing.scoring.clip_dino`.

    from editing.scoring.toy_metrics import score_edit
    score = score_edit(result.source, result.targets[0], pair)   # pair: an EditPair
    score.success, score.iou, score.background_psnr
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from editing.scoring.images import ImageLike, mean_abs_diff, psnr, same_size, to_array

# which judge answers for which slot of an editing template
SLOT_JUDGES = {
    "colour": "colour",
    "color": "colour",
    "animal": "category",
    "category": "category",
    "object": "category",
}


@dataclass(frozen=True)
class EditScore:
    """The toy-world scores of one edit.

    Attributes:
        slot: what the edit changes (``colour`` or ``animal``).
        target: the label the edit should reach (``blue``, ``horse``).
        judged: what the judge sees on the edited image (``""``: no object found).
        success: ``judged == target``.
        source_found, edit_found: an object was found in the source / the edit.
        iou: mask IoU of the source's and the edit's objects (0 when one is missing).
        shape_distance: the judges' shape distance of the two masks (NaN when one is missing).
        background_psnr: PSNR (dB) outside both masks (grown by ``edge`` px).
        background_diff: mean absolute difference (0-255) outside both masks.
        source_shift: colour edits only (else NaN): where the edited object's colour sits
            between the target's palette colour (0) and the source's (1), see
            :func:`probe.toy.judges.judge.colour_shift`. A leak of the source's colour shows here
            before it flips the judged colour.
    """

    slot: str
    target: str
    judged: str
    success: bool
    source_found: bool
    edit_found: bool
    iou: float
    shape_distance: float
    background_psnr: float
    background_diff: float
    source_shift: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_kind(slot: str, target: str | None = None, world: Any = None) -> str:
    """Which judge answers for an edit slot: ``"colour"`` or ``"category"``.

    Args:
        slot: the editing template's slot (``colour``, ``animal``, ...).
        target: the target word, used when the slot name is not known.
        world: the toy world whose colours and categories the target is looked up in (a
            :class:`~probe.toy.world.world.World` or its name; default the shipped toy's).

    Raises:
        ValueError: neither the slot nor the target word tells.
    """
    if slot in SLOT_JUDGES:
        return SLOT_JUDGES[slot]
    from probe.toy.world.world import get_world

    w = get_world(world)
    if target in w.palette:
        return "colour"
    if target in w.categories:
        return "category"
    raise ValueError(
        f"cannot judge slot {slot!r} (target {target!r}) in the toy world: it judges "
        f"colour and category slots ({', '.join(SLOT_JUDGES)})"
    )


def score_edit(
    source: ImageLike,
    edited: ImageLike,
    pair: Any = None,
    *,
    slot: str = "",
    target: str = "",
    source_label: str = "",
    edge: int = 1,
    world: Any = None,
) -> EditScore:
    """Score one toy-world edit with the judges of :mod:`probe.toy.judges.judge`.

    Args:
        source: the source image.
        edited: the edited (target) image, same size.
        pair: an :class:`~probe.prompts.templates.EditPair` (its ``slot`` and ``target_word``), or
            ``None`` with ``slot`` and ``target`` given.
        slot: the edited slot when no pair is given.
        target: the target label when no pair is given.
        source_label: the source's label when no pair is given (for ``source_shift``).
        edge: pixels the object masks are grown by before the background is compared.
        world: the toy world the images are drawn in (a :class:`~probe.toy.world.world.World` or its
            name; default the shipped toy's; a model's: :func:`~probe.toy.world.world.world_of`).

    Returns:
        :class:`EditScore`.

    Raises:
        ValueError: images of different sizes, or a slot the toy world cannot judge.

    Example:
        >>> score = score_edit(result.source, result.targets[0], slot="colour", target="blue")
        >>> score.success, round(score.iou, 2)
        (True, 0.91)
    """
    from probe.toy.judges import judge as judges

    if pair is not None:
        slot, target, source_label = pair.slot, pair.target_word, pair.source_word
    kind = judge_kind(slot, target, world)
    src, out = to_array(source), to_array(edited)
    same_size(src, out)
    src_mask = np.asarray(judges.find_object(src, world), dtype=bool)
    out_mask = np.asarray(judges.find_object(out, world), dtype=bool)
    found_src, found_out = bool(src_mask.any()), bool(out_mask.any())
    judged = ""
    shift = math.nan
    if found_out:
        label = judges.judge_colour if kind == "colour" else judges.judge_category
        judged = str(label(out, out_mask, world))
        if kind == "colour" and source_label and source_label != target:
            shift = judges.colour_shift(out, source_label, target, out_mask, world)
    both = found_src and found_out
    union = src_mask | out_mask
    if edge > 0 and union.any():
        from scipy.ndimage import binary_dilation

        union = binary_dilation(union, iterations=edge)
    outside = ~union
    return EditScore(
        slot=slot,
        target=target,
        judged=judged,
        success=judged == target,
        source_found=found_src,
        edit_found=found_out,
        iou=float(judges.mask_iou(src_mask, out_mask)) if both else 0.0,
        shape_distance=float(judges.shape_distance(src_mask, out_mask)) if both else math.nan,
        background_psnr=psnr(src, out, outside),
        background_diff=mean_abs_diff(src, out, outside),
        source_shift=shift,
    )


def summarise(scores: Iterable[EditScore | dict[str, Any]]) -> dict[str, float]:
    """Means over edits: success rate, found rate, IoU, shape distance, background PSNR/diff,
    source shift.

    NaNs (no object, no background, not a colour edit) are left out of each mean; ``n`` counts
    every edit.

    Example:
        >>> summarise([score_edit(a, b, pair) for (a, b), pair in zip(images, pairs)])
        {'n': 90, 'success': 0.93, 'iou': 0.81, ...}
    """
    rows = [s.as_dict() if isinstance(s, EditScore) else s for s in scores]
    out: dict[str, float] = {"n": float(len(rows))}
    columns = {
        "success": "success",
        "found": "edit_found",
        "iou": "iou",
        "shape_distance": "shape_distance",
        "background_psnr": "background_psnr",
        "background_diff": "background_diff",
        "source_shift": "source_shift",
    }
    for name, column in columns.items():
        values = np.array([float(r.get(column, math.nan)) for r in rows], dtype=np.float64)
        values = values[~np.isnan(values)]
        out[name] = float(values.mean()) if values.size else math.nan
    return out
