"""Detections compared one to one: ``match_detections``."""

import pytest
import torch
from conftest import assert_same_detections

from multibox.structures import Detections, match_detections


def _detections(rows):
    """``rows``: ``(label, score, x1, y1, x2, y2)`` each."""
    t = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    return Detections(t[:, 2:], t[:, 1], t[:, 0].long())


def test_detections_that_tie_to_rounding_match_in_either_order():
    expected = _detections([(0, 0.9, 0, 0, 10, 10), (1, 0.5, 5, 5, 20, 20), (2, 0.5, 30, 30, 40, 40)])
    # the two 0.5 scores an ulp apart and in the other order, a box 1e-5 px off
    found = _detections([(0, 0.9, 0, 0, 10, 10), (2, 0.50000006, 30, 30, 40, 40.00001), (1, 0.5, 5, 5, 20, 20)])
    assert match_detections(found, expected, score_atol=1e-6, box_atol=1e-4).tolist() == [0, 2, 1]
    assert_same_detections(found, expected)


def test_a_detection_without_its_counterpart_is_unmatched():
    expected = _detections([(0, 0.9, 0, 0, 10, 10), (1, 0.5, 5, 5, 20, 20)])
    other_label = _detections([(0, 0.9, 0, 0, 10, 10), (2, 0.5, 5, 5, 20, 20)])
    other_score = _detections([(0, 0.9, 0, 0, 10, 10), (1, 0.5001, 5, 5, 20, 20)])
    other_box = _detections([(0, 0.9, 0, 0, 10, 10), (1, 0.5, 5, 5, 20, 20.01)])
    for found in (other_label, other_score, other_box):
        assert match_detections(found, expected, score_atol=1e-6, box_atol=1e-4).tolist() == [0, -1]
        with pytest.raises(AssertionError):
            assert_same_detections(found, expected)


def test_each_expected_detection_stands_for_one_found_detection():
    expected = _detections([(0, 0.9, 0, 0, 10, 10)])
    twice = _detections([(0, 0.9, 0, 0, 10, 10), (0, 0.9, 0, 0, 10, 10)])
    assert match_detections(twice, expected, score_atol=1e-6, box_atol=1e-4).tolist() == [0, -1]
    # the closest score wins when two could match
    pair = _detections([(0, 0.5, 0, 0, 10, 10), (0, 0.5000001, 0, 0, 10, 10)])
    one = _detections([(0, 0.5000001, 0, 0, 10, 10)])
    assert match_detections(one, pair, score_atol=1e-6, box_atol=1e-4).tolist() == [1]
    assert match_detections(Detections.empty(), expected, score_atol=1, box_atol=1).tolist() == []
    assert match_detections(expected, Detections.empty(), score_atol=1, box_atol=1).tolist() == [-1]
    with pytest.raises(AssertionError, match="1 detections, expected 2"):
        assert_same_detections(expected, twice)
