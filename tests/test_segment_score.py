"""Chefer et al.'s segmentation protocol (as ConceptAttention runs it) on hand-made maps and
masks whose scores are worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from probe.scoring.segmentation import (
    binarise,
    normalised_map,
    segment_scores,
    summarise,
)

RAMP = np.arange(16, dtype=float).reshape(4, 4)  # 0..15, row by row
# object: the right half of rows 1-3, pixels 6, 7, 10, 11, 14, 15
RIGHT = np.zeros((4, 4), bool)
RIGHT[1:, 2:] = True


def test_a_4x4_ramp_against_a_hand_mask():
    # min-max: RAMP / 15, mean 7.5 / 15 = 0.5; strictly above: 8..15 (the lower two rows)
    # object:     found {8..15} ∩ mask {6,7,10,11,14,15} = {10,11,14,15} = 4,
    #             union {6..15} = 10                        -> IoU 0.4
    # background: found {0..7} ∩ mask {0..5,8,9,12,13} = {0..5} = 6,
    #             union {0..9,12,13} = 12                   -> IoU 0.5; mIoU 0.45
    # pixel accuracy: (4 + 6) / 16 = 0.625
    s = segment_scores(RAMP, RIGHT)
    assert binarise(normalised_map(RAMP, (4, 4))).sum() == 8
    assert s.pixel_accuracy == pytest.approx(0.625)
    assert s.iou_object == pytest.approx(0.4) and s.iou_background == pytest.approx(0.5)
    assert s.miou == pytest.approx(0.45)


def test_ap_of_a_perfect_and_of_a_swapped_ranking():
    # maps in quarters, so that 1 - map is exact in floating point (ties stay ties)
    mask = np.array([[0, 0], [1, 1]], bool)  # pixels 2, 3 are the object
    # perfect: map [0,1,3,4] -> [0, 1/4, 3/4, 1]; the 8 entries (bg channel 1 - map, object
    # channel map) ranked: every positive (bg of 0,1 and object of 2,3) scores 1 or 3/4 and
    # every negative 1/4 or 0 -> precision 1 up to recall 1: AP 1
    perfect = segment_scores(np.array([[0.0, 1.0], [3.0, 4.0]]), mask)
    assert (perfect.ap, perfect.pixel_accuracy, perfect.miou) == (1.0, 1.0, 1.0)
    # swapped: map [0,3,1,4] -> [0, 3/4, 1/4, 1]
    #   score 1:   bg px0 (+), obj px3 (+)  -> P 2/2 = 1,   R 2/4
    #   score 3/4: bg px2 (-), obj px1 (-)  -> P 2/4,       R 2/4
    #   score 1/4: bg px1 (+), obj px2 (+)  -> P 4/6 = 2/3, R 4/4
    #   score 0:   bg px3 (-), obj px0 (-)  -> P 4/8,       R 4/4
    #   AP = sum of dR * P = 0.5 * 1 + 0.5 * (2/3) = 5/6
    swapped = segment_scores(np.array([[0.0, 3.0], [1.0, 4.0]]), mask)
    assert swapped.ap == pytest.approx(5 / 6)
    # binary: above the mean 0.5 are px1 (3/4) and px3 (1): object px3 right, px1 wrong,
    # px0 right, px2 wrong -> accuracy 0.5; object IoU 1/3, background IoU 1/3
    assert swapped.pixel_accuracy == 0.5
    assert swapped.iou_object == pytest.approx(1 / 3) and swapped.miou == pytest.approx(1 / 3)


def test_the_map_is_upsampled_to_the_mask_nearest_by_default():
    # a 2x2 map [[0,1],[2,3]] upsampled to 4x4 by nearest is four 2x2 tiles: above the mean
    # 0.5 are the lower two rows (2/3 and 1): the same as the 4x4 ramp's binary map
    small = np.array([[0.0, 1.0], [2.0, 3.0]])
    up = normalised_map(small, (4, 4))
    assert np.array_equal(up[::2, ::2], np.array([[0, 1 / 3], [2 / 3, 1]]))
    assert np.array_equal(binarise(up), binarise(normalised_map(RAMP, (4, 4))))
    smooth = normalised_map(small, (4, 4), mode="bilinear")
    assert smooth.min() == 0 and smooth.max() == 1 and len(np.unique(smooth)) > 4
    with pytest.raises(ValueError, match="'nearest'"):
        normalised_map(small, (4, 4), mode="bicubic")  # type: ignore[arg-type]


def test_a_constant_map_marks_no_object_and_is_never_nan():
    mask = np.array([[0, 0], [1, 1]], bool)
    s = segment_scores(np.full((2, 2), 7.0), mask)
    # normalised to zeros, nothing above the mean: found nothing
    # accuracy: the 2 background pixels -> 0.5; object IoU 0 / 2 = 0;
    # background IoU: 2 / 4 = 0.5; mIoU 0.25
    # AP: bg channel all 1 (targets 1,1,0,0), object channel all 0 (targets 0,0,1,1):
    #   score 1: P 2/4, R 2/4;  score 0: P 4/8, R 4/4  -> AP 0.5·0.5 + 0.5·0.5 = 0.5
    assert (s.pixel_accuracy, s.iou_object, s.iou_background) == (0.5, 0.0, 0.5)
    assert s.miou == 0.25 and s.ap == pytest.approx(0.5)


def test_an_empty_or_full_mask_is_nan_and_left_out_of_the_summary():
    empty = segment_scores(RAMP, np.zeros((4, 4), bool))
    full = segment_scores(RAMP, np.ones((4, 4), bool))
    for s in (empty, full):
        assert not s.scored
        assert all(math.isnan(v) for v in (s.pixel_accuracy, s.miou, s.ap))
    ramp = segment_scores(RAMP, RIGHT)
    perfect = segment_scores(np.array([[0.0, 1.0], [3.0, 4.0]]), np.array([[0, 0], [1, 1]], bool))
    total = summarise([ramp, empty, perfect, full])
    # pooled over the two scored images: correct (10 + 4) / (16 + 4) pixels = 0.7
    # object IoU (4 + 2) / (10 + 2) = 0.5; background (6 + 2) / (12 + 2) = 4/7
    # mAP: mean of the two APs
    assert (total["images"], total["left_out"]) == (2, 2)
    assert total["pixel_accuracy"] == pytest.approx(0.7)
    assert total["iou_object"] == pytest.approx(0.5)
    assert total["iou_background"] == pytest.approx(4 / 7)
    assert total["miou"] == pytest.approx((0.5 + 4 / 7) / 2)
    assert total["map"] == pytest.approx((ramp.ap + 1.0) / 2)
    assert math.isnan(summarise([empty])["miou"])


def test_a_map_that_is_not_2d_is_refused():
    with pytest.raises(ValueError, match=r"\[h, w\]"):
        segment_scores(np.zeros((1, 4, 4)), RIGHT)
