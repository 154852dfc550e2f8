"""Scoring sweep edits of a real checkpoint, where the toy world's judges cannot: CLIP decides.

:class:`ClipEditScorer` fits the ``scorer=`` argument of :func:`editing.sweep.run.sweep` (and
``attnprobe sweep --clip DIR [--dino DIR]``). For each edit it returns an
:class:`~editing.scoring.toy_metrics.EditScore` whose fields mean:

- ``judged``: ``"target"`` or ``"source"``, whichever prompt CLIP finds closer to the edited image;
  ``success``: the target's;
- ``source_shift``: CLIP's probability of the source prompt against the target's (softmax of the
  two cosines times CLIP's logit scale): 0 = clearly the target, 1 = clearly the source. The
  continuous companion of success, as the colour shift is in the toy world;
- ``shape_distance``: the DINO structure distance to the source image (with a DINO folder),
  lower = more structure kept; ``iou`` is NaN (real images have no object masks);
- ``background_psnr`` / ``background_diff``: over the whole image (no mask).

    scorer = ClipEditScorer(ClipMetrics("~/weights/clip"), DinoStructure("~/weights/dino"))
    rows = sweep(pipe, load_edit_pairs("colour_edits"), ["none", "fpe", "all"], scorer=scorer)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from editing.scoring.clip_dino import ClipMetrics, DinoStructure
from editing.scoring.images import ImageLike, mean_abs_diff, psnr
from editing.scoring.toy_metrics import EditScore


class ClipEditScorer:
    """Edit success by CLIP (target prompt vs source prompt), structure by DINO (optional).

    Args:
        clip: :class:`~editing.scoring.clip_dino.ClipMetrics` of a local CLIP folder.
        dino: :class:`~editing.scoring.clip_dino.DinoStructure`, or None (``shape_distance`` NaN).

    Example:
        >>> scorer = ClipEditScorer(ClipMetrics("weights/clip"))
        >>> scorer(result.source, result.targets[0], pair).success
        True
    """

    name = "clip"

    def __init__(self, clip: ClipMetrics, dino: DinoStructure | None = None) -> None:
        self.clip = clip
        self.dino = dino

    def __repr__(self) -> str:
        return f"ClipEditScorer(dino={'yes' if self.dino is not None else 'no'})"

    @torch.no_grad()
    def source_probability(self, image: ImageLike, source: str, target: str) -> float:
        """CLIP's probability that ``image`` shows ``source`` rather than ``target``."""
        if source == target:
            raise ValueError(f"source and target are both {source!r}: nothing to tell apart")
        texts = self.clip.text_embeddings([source, target])
        cos = self.clip.image_embeddings([image]) @ texts.T
        scale = float(self.clip.model.logit_scale.exp())
        return float(torch.softmax(scale * cos[0], dim=-1)[0])

    def __call__(self, source: ImageLike, edited: ImageLike, pair: Any) -> EditScore:
        """Score one edit of ``pair`` (an :class:`~probe.prompts.templates.EditPair`)."""
        shift = self.source_probability(edited, pair.source, pair.target)
        judged = "source" if shift > 0.5 else "target"
        distance = self.dino.distance(source, edited) if self.dino is not None else math.nan
        return EditScore(
            slot=pair.slot,
            target=pair.target_word,
            judged=judged,
            success=judged == "target",
            source_found=True,
            edit_found=True,
            iou=math.nan,
            shape_distance=float(distance),
            background_psnr=psnr(source, edited),
            background_diff=mean_abs_diff(source, edited),
            source_shift=shift,
        )


def clip_scorer(
    clip: str | Path | None, dino: str | Path | None = None, device: str | torch.device = "cpu"
) -> ClipEditScorer | None:
    """The scorer of ``--clip DIR [--dino DIR]``: a :class:`ClipEditScorer` of those local
    folders, or None (the toy judges) without ``clip``.

    Raises:
        ValueError: ``dino`` without ``clip`` (CLIP decides the edit's success).
        FileNotFoundError: a folder that is not there (nothing is downloaded).

    Example:
        >>> clip_scorer("~/weights/clip", "~/weights/dino")
        ClipEditScorer(dino=yes)
    """
    if clip is None:
        if dino is not None:
            raise ValueError("--dino needs --clip too: CLIP decides the edit's success")
        return None
    return ClipEditScorer(
        ClipMetrics(clip, device), DinoStructure(dino, device) if dino is not None else None
    )
