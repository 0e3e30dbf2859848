"""Run every benchmark of issue 5 once, print the table of ratios, write bench/RESULTS.md.

    python -m bench [--quick] [--only ppl,cmp,cmpscale,results,dataset,operator,gpu] [--no-write]

Every ratio is taken from two measurements made side by side in this run (the machines are shared and
noisy: absolute times are not comparable across runs). On 2 CPU cores the operator's part
alone (500 to 5,000 jobs on a real control plane, a churn run, a failover) takes about 9 minutes.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from bench import common
from bench.common import ModelSpec, Row

ALL = ("ppl", "cmp", "cmpscale", "results", "dataset", "operator", "gpu")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run; not for RESULTS.md)")
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    p.add_argument("--no-write", action="store_true", help="do not rewrite bench/RESULTS.md")
    return p


class _Rows(list):
    """The table's rows, each printed as soon as it is measured."""

    def __iadd__(self, new):
        for r in new:
            print("  " + " | ".join(r.cells()), flush=True)
        return super().__iadd__(new)


def table(rows: list[Row]) -> str:
    head = ["target", "measured", "value", "goal", "status", "detail"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> list[Row]:
    import torch

    logging.basicConfig(level=logging.WARNING)
    common.require_data()
    only = set(args.only.split(","))
    # 29 images (FudanPed00001-00029) in ~5 shards; --quick: 9 images
    data_filter = "PNGImages/FudanPed0000*.png" if args.quick else "PNGImages/FudanPed000[0-2]*.png"
    spec = ModelSpec()
    rows = _Rows()
    facts: dict = {"machine": common.machine(), "spec": spec, "started": time.time()}
    torch.manual_seed(common.SEED)
    with tempfile.TemporaryDirectory(prefix="assay-bench-") as tmp:
        work = Path(tmp)
        if "ppl" in only or "results" in only:
            from bench import ppl, results_size, seed_baseline

            print("ppl: model-only vs end to end ...", flush=True)
            got, info = ppl.run(work / "ppl", spec, data_filter, 2 << 20)
            rows += got
            facts["ppl"] = info
            print("ppl: the seed's way ...", flush=True)
            got, seed = seed_baseline.run(work, spec, info["samples"], info["e2e_ips"],
                                          work / "ppl" / "model-src" / "maskrcnn.pt")
            rows += got
            facts["seed"] = seed
            rows += results_size.run(info["results_dir"], info["images"], seed["json_bytes"], info["handler"],
                                     [info["handler"].decode(s) for s in info["samples"][:4]])
        if "cmp" in only:
            from bench import cmp

            n = 1000 if args.quick else 5000
            print(f"cmp: {n} images, pycocotools vs assay ...", flush=True)
            got, facts["cmp"] = cmp.run_speed(n)
            rows += got
            print("cmp: memory, 10 vs 50 shards ...", flush=True)
            got, facts["cmp_memory"] = cmp.run_memory(work, 500 if args.quick else 2000)
            rows += got
        if "cmpscale" in only:
            from bench import cmp_scale

            real, tables = ((1000, 3000), (20_000,)) if args.quick else ((5_000, 10_000, 100_000), (1_000_000,))
            print(f"cmp at scale: {real} images end to end, {tables} from generated match tables ...", flush=True)
            ppl_s = 1 / facts["ppl"]["e2e_ips"] if "ppl" in facts else None
            got, facts["cmpscale"] = cmp_scale.run(work / "cmpscale", real, tables, ppl_s_per_image=ppl_s)
            rows += got
        if "dataset" in only:
            from bench import dataset_build

            print("dataset build: local and S3 (moto) ...", flush=True)
            rows += dataset_build.run(work / "dataset")
        if "operator" in only:
            from bench import operator_scale

            # a real control plane (no kubelet) in this process's children: see bench/operator_scale.py
            # 500, 2,000 (then 2 min of churn) and 5,000 jobs, then the failover: 513 s on 2 cores (2026-12-07)
            sizes, at = ((10, 25), 25) if args.quick else ((500, 2000, 5000), 2000)
            print(f"operator: {sizes} EvaluationJobs on a real API server, churn at {at} ...", flush=True)
            got, facts["operator"] = operator_scale.run(
                work / "operator", sizes=sizes, at=at, idle_seconds=15 if args.quick else 30,
                churn_seconds=30 if args.quick else operator_scale.CHURN_SECONDS)
            rows += got
        if "gpu" in only:
            from bench import gpu

            rows += gpu.run(work / "gpu", data_filter)
    facts["seconds"] = time.time() - facts["started"]
    text = table(rows)
    print()
    print(text)
    print(f"\n{facts['seconds']:.0f}s on {facts['machine']['cpu']} ({facts['machine']['cores']} cores), "
          f"torch {facts['machine']['torch']}, GPU: {facts['machine']['gpu']}")
    if not args.no_write and not args.quick and only == set(ALL):
        from bench import report

        (common.REPO / "bench" / "RESULTS.md").write_text(report.render(text, facts, rows))
        print("wrote bench/RESULTS.md")
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
