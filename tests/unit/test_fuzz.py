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
from assay.handler import rle_encode
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
    results.write_local(path, ["a", "b"], [
        {"boxes": np.float32([[1, 2, 3, 4]]), "masks": rle_encode(np.ones((1, 6, 5), bool)), "n": 1},
        {"boxes": np.zeros((0, 4), np.float32), "masks": rle_encode(np.zeros((0, 6, 5), bool)), "n": 0}], {"x": 1})
    return path.read_bytes()


@FUZZ
@given(data=st.binary(max_size=2048))
def test_results_reader_on_random_bytes(tmp_path, data):
    path = tmp_path / "r.parquet"
    path.write_bytes(data)
    try:
        results.read_local(path)
    except IntegrityError:
        pass


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=6))
def test_results_reader_on_mutated_file(tmp_path, flips):
    data = bytearray(_valid_results(tmp_path))
    for pos, mask in flips:
        data[pos % len(data)] ^= mask
    path = tmp_path / "m.parquet"
    path.write_bytes(bytes(data))
    try:
        results.read_local(path)
    except IntegrityError:
        pass


@FUZZ
@given(doc=json_values)
def test_dataset_manifest_of_any_json(doc):
    try:
        shards.DatasetManifest.from_json(json.dumps(doc), "m.json")
    except IntegrityError:
        pass
