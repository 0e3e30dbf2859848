"""The cmp benchmarks still run against today's cmp (their fixtures publish results the way ppl does).

Only that they run and measure is checked here; what they measure is bench/'s business.
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_cmp_quick_runs():
    out = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "cmp", "--no-write"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 3 cmp")]
    assert [r.split(" | ")[0] for r in rows] == ["| 3 cmp speed", "| 3 cmp exactness", "| 3 cmp memory"], out.stdout
    assert "| met |" in rows[1], rows[1]  # assay's AP equals pycocotools' on the same detections
