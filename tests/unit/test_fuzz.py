"""Property-based fuzzing: whatever bytes or documents come in, only the documented errors come out."""

from __future__ import annotations

import copy
import io
import json
import tarfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay import results, shards
from assay.archive import add_bytes
from assay.errors import IntegrityError, SpecError
from assay.handler import RLEMasks, rle_encode
from assay.spec import EvaluationJob, load_job
from tests.unit.test_bad_input import BASE

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                        max_size=4), max_leaves=12)
PATHS = ["spec", "spec.model", "spec.model.uri", "spec.ppl", "spec.ppl.workers", "spec.ppl.batchSize",
         "spec.runtime", "spec.runtime.env", "spec.storage", "spec.storage.secretRef", "metadata", "metadata.name",
         "spec.ppl.tolerations", "spec.ppl.resources", "spec.suspend", "kind"]


@FUZZ
@given(path=st.sampled_from(PATHS), value=json_values)
def test_manifest_parser_raises_only_spec_errors(path, value):
    doc = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    target = doc
    for k in parents:
        target = target[k] if isinstance(target.get(k), dict) else target.setdefault(k, {})
    target[last] = value
    try:
        EvaluationJob.from_manifest(doc)
    except SpecError:
        pass


@FUZZ
@given(text=st.text(max_size=300))
def test_manifest_file_of_any_text(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    try:
        load_job(path)
    except SpecError:
        pass


def _valid_shard() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(3):
            add_bytes(tar, f"{i:06d}.bin", bytes(range(50)) * (i + 1))
            add_bytes(tar, f"{i:06d}.json", json.dumps({"id": f"s{i}", "label": {"k": i}}).encode())
    return buf.getvalue()


VALID_SHARD = _valid_shard()


@FUZZ
@given(data=st.binary(max_size=4096))
def test_shard_reader_on_random_bytes(tmp_path, data):
    path = tmp_path / "s.tar"
    path.write_bytes(data)
    try:
        list(shards.iter_shard_samples(path, "s.tar"))
    except IntegrityError:
        pass


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(VALID_SHARD) - 1), st.integers(1, 255)), min_size=1, max_size=8))
def test_shard_reader_on_mutated_shard(tmp_path, flips):
    data = bytearray(VALID_SHARD)
    for pos, mask in flips:
        data[pos] ^= mask
    path = tmp_path / "s.tar"
    path.write_bytes(bytes(data))
    try:
        for sample in shards.iter_shard_samples(path, "s.tar"):
            assert isinstance(sample.id, str)
    except IntegrityError:
        pass


def _valid_results(tmp_path) -> bytes:
    path = tmp_path / "r.parquet"
    results.write_local(path, ["a", "b"], VALID_PREDICTIONS, {"x": 1})
    return path.read_bytes()


VALID_PREDICTIONS = [
    {"boxes": np.float32([[1, 2, 3, 4]]), "masks": rle_encode(np.ones((1, 6, 5), bool)), "n": 1},
    {"boxes": np.zeros((0, 4), np.float32), "masks": rle_encode(np.zeros((0, 6, 5), bool)), "n": 0}]
#: what a bug in the reader raises, never a damaged file: read_local turns every exception into
#: IntegrityError ("delete it; ppl recomputes"), so the fuzz looks at what it wrapped
BUGS = (AttributeError, NameError, AssertionError, RecursionError, ImportError, NotImplementedError)


def _read_or_refuse(path):
    """read_local's answer to a damaged file: a refusal naming it, caused by the data, or a well-formed read."""
    try:
        ids, preds, meta = results.read_local(path)
    except IntegrityError as exc:
        assert str(path) in str(exc) and exc.hint, exc
        assert not isinstance(exc.__cause__, BUGS), f"a reader bug passed off as damaged data: {exc.__cause__!r}"
        return None
    assert len(ids) == len(preds) and all(isinstance(i, str) for i in ids)
    for pred in preds:
        for value in pred.values():
            assert isinstance(value, np.ndarray | RLEMasks | int | float | str | bool | list | dict), value
    return ids, preds, meta


def test_results_reader_reads_the_valid_file_back(tmp_path):
    """The fuzzed file is valid to begin with: the mutations below start from a file that reads back."""
    path = tmp_path / "ok.parquet"
    path.write_bytes(_valid_results(tmp_path))
    ids, preds, meta = results.read_local(path)
    assert ids == ["a", "b"] and meta["x"] == 1 and [p["n"] for p in preds] == [1, 0]
    np.testing.assert_array_equal(preds[0]["boxes"], VALID_PREDICTIONS[0]["boxes"])
    assert preds[0]["masks"] == VALID_PREDICTIONS[0]["masks"] and preds[1]["masks"] == VALID_PREDICTIONS[1]["masks"]


@FUZZ
@given(data=st.binary(max_size=2048))
def test_results_reader_on_random_bytes(tmp_path, data):
    path = tmp_path / "r.parquet"
    path.write_bytes(data)
    assert _read_or_refuse(path) is None, "random bytes are not a results file"


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=6))
def test_results_reader_on_mutated_file(tmp_path, flips):
    data = bytearray(_valid_results(tmp_path))
    for pos, mask in flips:
        data[pos % len(data)] ^= mask
    path = tmp_path / "m.parquet"
    path.write_bytes(bytes(data))
    _read_or_refuse(path)


@FUZZ
@given(doc=json_values)
def test_dataset_manifest_of_any_json(doc):
    try:
        shards.DatasetManifest.from_json(json.dumps(doc), "m.json")
    except IntegrityError:
        pass
