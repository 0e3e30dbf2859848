"""ppl workers killed with SIGKILL at random points: each rerun computes only unfinished shards, every
sample ends up counted exactly once, and the metrics equal an unfaulted run's exactly.

The default run kills 4 times; `python -m pytest -m slow tests/e2e/test_faults_kill.py` is the soak
(30 kills over 2 workers)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from assay import layout, results
from assay.runner import cmp, ppl
from assay.spec import RunContext


def _start(ctx: RunContext, delay: str) -> subprocess.Popen:
    env = {**os.environ, **ctx.to_env(), "JOB_COMPLETION_INDEX": str(ctx.worker_index),
           "ASSAY_TEST_PREDICT_DELAY": delay, "ASSAY_TEST_JITTER": "1"}
    return subprocess.Popen([sys.executable, "-m", "assay.runner", "ppl"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)


def _finished(out: str, shards: int) -> dict[int, tuple[int, int]]:
    """The shards with results, each with its file's identity: a shard computed again gets a new file."""
    files = {i: Path(layout.results_uri(out, i)) for i in range(shards)}
    return {i: (f.stat().st_ino, f.stat().st_mtime_ns) for i, f in files.items() if f.exists()}


def _kill_and_resume(test_split, oracle_model, tmp_path, kills: int, workers: int, seed: int):
    rng = random.Random(seed)
    out = str(tmp_path / "out")
    per_index = -(-len(test_split.shards) // workers)  # one work item per worker
    ctxs = [RunContext(job_name="soak", model_uri=oracle_model.uri, dataset_uri=test_split.uri, output_uri=out,
                       worker_index=i, worker_count=workers, shards_per_index=per_index, batch_size=2,
                       device="cpu") for i in range(workers)]
    killed = 0
    while killed < kills:
        before = _finished(out, len(test_split.shards))
        if len(before) == len(test_split.shards):
            for i in range(len(test_split.shards)):  # all done: start over on fresh output to keep killing
                os.remove(layout.results_uri(out, i))
            before = {}
        procs = [_start(c, "0.15") for c in ctxs]
        time.sleep(rng.uniform(0.5, 4.0))  # a random point: model load, mid-shard, between shards, upload
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        killed += 1
        after = _finished(out, len(test_split.shards))
        assert before.items() <= after.items(), "a finished shard is neither lost nor computed again"
        assert not list(Path(out).rglob(".tmp-*")), "no half-written object is visible after a kill"
    before = _finished(out, len(test_split.shards))
    final = [ppl.run(c) for c in ctxs]  # the final, unkilled run finishes what is left
    assert sum(r.shards_skipped for r in final) == len(before), "it skips exactly the finished shards"
    assert before.items() <= _finished(out, len(test_split.shards)).items(), "the final run recomputed a shard"
    again = [ppl.run(c) for c in ctxs]  # and a rerun of a finished output computes nothing
    assert sum(r.shards_skipped for r in again) == len(test_split.shards) and not any(r.shards_done for r in again)
    faulted = cmp.run(ctxs[0])
    ids = Counter()
    for i in range(len(test_split.shards)):
        ids.update(results.read_local(layout.results_uri(out, i))[0])
    clean_ctx = ctxs[0].model_copy(update={"output_uri": str(tmp_path / "clean"), "worker_count": 1,
                                           "shards_per_index": 0})
    ppl.run(clean_ctx)
    clean = cmp.run(clean_ctx)
    return killed, ids, faulted, clean


@pytest.fixture
def jitter(monkeypatch):
    monkeypatch.setenv("ASSAY_TEST_JITTER", "1")


def test_random_kills(test_split, oracle_model, tmp_path, jitter):
    killed, ids, faulted, clean = _kill_and_resume(test_split, oracle_model, tmp_path, kills=4, workers=1, seed=3)
    print(f"\nkills: {killed}, samples: {sum(ids.values())}, lost: {17 - len(ids)}, "
          f"duplicated: {sum(n - 1 for n in ids.values())}")
    assert len(ids) == 17 and all(n == 1 for n in ids.values())
    assert faulted.summary == clean.summary and faulted.full == clean.full
    assert clean.summary["bbox/AP"] < 1.0


@pytest.mark.slow
def test_random_kills_soak(test_split, oracle_model, tmp_path, jitter):
    killed, ids, faulted, clean = _kill_and_resume(test_split, oracle_model, tmp_path, kills=30, workers=2, seed=11)
    print(f"\nsoak kills: {killed}, lost: {17 - len(ids)}, duplicated: {sum(n - 1 for n in ids.values())}")
    assert len(ids) == 17 and all(n == 1 for n in ids.values())
    assert faulted.summary == clean.summary and faulted.full == clean.full
