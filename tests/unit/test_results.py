"""Results files: lossless arrays (dtype and shape), RLE masks, scalars, no pickle."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from assay import results
from assay.errors import HandlerError
from assay.handler import RLEMasks, rle_encode


def test_float_masks_and_arrays_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.random((3, 1, 40, 30), dtype=np.float32)  # Mask R-CNN's float mask probabilities
    preds = [
        {"masks_prob": torch.from_numpy(probs), "boxes": np.float32([[1.5, 2.25, 10, 20]]),
         "labels": np.int64([1]), "scores": torch.tensor([0.123456789], dtype=torch.float64), "n": 3,
         "name": "a", "flag": True},
        {"masks_prob": np.zeros((0, 1, 40, 30), np.float32), "boxes": np.zeros((0, 4), np.float32),
         "labels": np.zeros((0,), np.int64), "scores": np.zeros((0,), np.float64), "n": 0, "name": "b",
         "flag": False},
    ]
    path = tmp_path / "r.parquet"
    results.write_local(path, ["s1", "s2"], preds, {"shard": "x"})
    ids, back, meta = results.read_local(path)
    assert ids == ["s1", "s2"] and meta["shard"] == "x"
    assert back[0]["masks_prob"].dtype == np.float32 and back[0]["masks_prob"].shape == (3, 1, 40, 30)
    assert np.array_equal(back[0]["masks_prob"], probs)
    assert back[0]["scores"].dtype == np.float64 and back[0]["scores"][0] == 0.123456789
    assert back[1]["boxes"].shape == (0, 4) and back[1]["boxes"].dtype == np.float32
    assert back[0]["n"] == 3 and back[1]["name"] == "b" and back[0]["flag"] is True


def test_threshold_not_cast_keeps_masks(tmp_path):
    """The seed cast float probabilities to uint8, which made every mask empty (segm AP 0.000)."""
    probs = np.zeros((2, 20, 20), np.float32)
    probs[0, 2:10, 3:8] = 0.9
    probs[1, 5:15, 5:15] = 0.6
    rle = rle_encode(torch.from_numpy(probs))
    results.write_local(tmp_path / "m.parquet", ["s"], [{"masks": rle}], {})
    _, back, _ = results.read_local(tmp_path / "m.parquet")
    assert isinstance(back[0]["masks"], RLEMasks)
    decoded = back[0]["masks"].decode()
    assert decoded.shape == (2, 20, 20)
    assert np.array_equal(decoded.astype(bool), probs >= 0.5)
    assert decoded[0].sum() == 40 and decoded[1].sum() == 100


def test_rle_is_smaller_than_json_lists():
    import json

    mask = np.zeros((1, 400, 300), np.float32)
    mask[0, 100:300, 50:150] = 0.8
    rle = rle_encode(mask)
    as_json = json.dumps(mask.tolist())
    assert len(rle.counts[0]) * 100 < len(as_json)


def test_files_are_plain_parquet_with_queryable_columns(tmp_path):
    path = tmp_path / "q.parquet"
    results.write_local(path, ["a"], [{"scores": np.float32([0.5, 0.25]), "masks": rle_encode(np.ones((1, 4, 4)))}],
                        {})
    table = pq.read_table(path)
    assert table.column_names == ["sample_id", "scores", "scores.shape", "masks.rle", "masks.size"]
    assert table.column("scores").to_pylist() == [[0.5, 0.25]]


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": np.array(["a"])}, {"sample_id": 1}, {"x.shape": 1}])
def test_unstorable_predictions_are_refused(tmp_path, bad):
    with pytest.raises(HandlerError):
        results.write_local(tmp_path / "bad.parquet", ["a"], [bad], {})


def test_type_change_between_samples_is_refused(tmp_path):
    with pytest.raises(HandlerError, match="changes type"):
        results.write_local(tmp_path / "t.parquet", ["a", "b"], [{"x": np.float32([1])}, {"x": np.int64([1])}], {})
