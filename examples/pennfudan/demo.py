"""The assay demo: PennFudanPed pedestrians, Mask R-CNN, COCO bbox and segm AP, on this machine.

    python examples/pennfudan/demo.py [--data PATH] [--workdir .assay/demo] [--train-seconds 240]

1. Finds PennFudanPed: --data, else ../shared/data/PennFudanPed beside the repository, else a cached or
   fresh download from the dataset's homepage (checked file by file), else a small synthetic set in
   the same layout (said plainly: its numbers say nothing about pedestrians).
2. Gets a model: torchvision's COCO Mask R-CNN weights when they can be downloaded (COCO "person"
   becomes "pedestrian"), else a short training run from scratch on the training images (every image
   outside the 17-image test split), which scores what a few minutes of CPU training can score.
3. Builds the dataset and the model package into a local store, runs the EvaluationJob with 2 ppl
   workers and cmp (the same code as `assay run`), and prints the metrics tables.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))


def find_data(given: Path | None, workdir: Path) -> tuple[Path, str]:
    from assay.sources import pennfudan

    if given:
        if not pennfudan.is_pennfudan(given):
            raise SystemExit(f"{given} does not hold PNGImages/ and PedMasks/; pass the PennFudanPed folder")
        return given, f"PennFudanPed from {given}"
    for candidate in (REPO.parent / "shared" / "data" / "PennFudanPed", Path.cwd().parent / "shared" / "data" /
                      "PennFudanPed"):
        if pennfudan.is_pennfudan(candidate):
            return candidate, f"PennFudanPed from {candidate}"
    cache = pennfudan.cache_dir()
    try:
        path = pennfudan.download(cache, timeout=20)
        return path, f"PennFudanPed downloaded from {pennfudan.ZIP_URL} (checksums verified) into {cache}"
    except Exception as exc:  # noqa: BLE001 - offline: say so and fall back
        print(f"  could not download PennFudanPed ({type(exc).__name__}: {exc})")
    path = pennfudan.synthesize(workdir / "data")
    return path, (f"SYNTHETIC data in the PennFudanPed layout at {path} (no real dataset found, no internet): "
                  "these numbers say nothing about real pedestrians")


def get_model(data: Path, out: Path, train_seconds: float) -> str:
    import train

    try:
        args = train.get_args_parser().parse_args(["--data", str(data), "--out", str(out), "--pretrained",
                                                   "--epochs", "0"])
        train.main(args)
        return "torchvision's COCO-pretrained Mask R-CNN R50-FPN (person -> pedestrian), not fine-tuned"
    except Exception as exc:  # noqa: BLE001 - offline: train instead
        print(f"  no pretrained weights ({type(exc).__name__}); training from scratch for {train_seconds:.0f}s")
    args = train.get_args_parser().parse_args([
        "--data", str(data), "--out", str(out), "--arch", "mobilenet_v3_fpn", "--min-size", "320",
        "--max-size", "480", "--epochs", "100", "--time-budget", str(train_seconds), "--lr", "0.02",
        "--batch-size", "4"])
    train.main(args)
    return (f"Mask R-CNN (MobileNetV3-FPN, 320 px) trained from scratch for {train_seconds:.0f}s on CPU: "
            "expect low AP; pass pretrained weights (train.py --weights) for real numbers")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="PennFudanPed folder (PNGImages/, PedMasks/)")
    p.add_argument("--workdir", type=Path, default=Path(".assay/demo"))
    p.add_argument("--train-seconds", type=float, default=400)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    from assay import datasets, packages
    from assay.runner.local import run_job
    from assay.spec import EvaluationJob

    t0 = time.monotonic()
    work = args.workdir.resolve()
    store = work / "store"
    print("[1/4] dataset")
    data, data_path = find_data(args.data, work)
    print(f"  {data_path}")
    print("[2/4] model")
    model_dir = work / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in ("handler.py", "model_def.py", "model.yaml"):
        shutil.copy(HERE / name, model_dir / name)
    model_path = get_model(data, model_dir, args.train_seconds)
    print(f"  {model_path}")
    print("[3/4] build dataset and model package")
    cfg = datasets.load_config(HERE / "dataset.yaml")
    dataset = datasets.build(cfg, str(store), data_dir=data)
    model = packages.build(packages.load_config(model_dir / "model.yaml"), str(store))
    print(f"  dataset {dataset.name}@{dataset.version}: {dataset.samples} samples, {len(dataset.shards)} shards")
    print(f"  model {model.name}@{model.version}")
    print(f"[4/4] assay run: {args.workers} ppl workers, then cmp")
    output = work / "jobs" / f"pennfudan-{model.version[:8]}-{dataset.version[:8]}"
    job = EvaluationJob.from_manifest({
        "apiVersion": "assay.dev/v1alpha1", "kind": "EvaluationJob", "metadata": {"name": "pennfudan-demo"},
        "spec": {"model": {"uri": model.uri}, "dataset": {"uri": dataset.uri}, "output": {"uri": str(output)},
                 "ppl": {"workers": args.workers, "batchSize": 2, "device": "auto"}}})
    result = run_job(job)
    report = result.report
    print()
    for iou in ("bbox", "segm"):
        print(f"COCO {iou} ({dataset.samples} images)")
        for stat in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
            value = report.summary.get(f"{iou}/{stat}")
            print(f"  {stat:<6} {'-' if value is None else f'{value:.3f}'}")
    print(f"\ndata:  {data_path}\nmodel: {model_path}\njob folder: {result.job_dir}"
          f"\ntotal time: {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()
