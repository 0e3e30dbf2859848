"""The assay demo: PennFudanPed pedestrians, Mask R-CNN, COCO bbox and segm AP, on this machine.

    python examples/pennfudan/demo.py [--data PATH] [--weights FILE] [--offline] [--steps 600] [--store .assay/store]

1. Finds PennFudanPed: --data, else ../shared/data/PennFudanPed beside the repository, else a cached or
   fresh download from the dataset's homepage (checked file by file), else a small synthetic set in
   the same layout (said plainly: its numbers say nothing about pedestrians).
2. Gets a model: the COCO Mask R-CNN weights of --weights FILE, else torchvision's download of them
   (COCO "person" becomes "pedestrian"), else (offline, or with --offline) the offline recipe of
   train.py: a ResNet-18 FPN Mask R-CNN trained from scratch for a fixed number of steps on the
   153 images outside the 17-image test split.
3. Builds the dataset and the model package into the store (the CLI's default, .assay/store), checks
   the pipeline with the dataset's own ground truth (`assay dataset check`: must score 1.000), runs the
   EvaluationJob with 2 ppl workers and cmp (the same code as `assay run`), and prints the tables.
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
    import pennfudan_data as pennfudan

    if given:
        if not pennfudan.is_pennfudan(given):
            raise SystemExit(f"error: {given} does not hold PNGImages/ and PedMasks/; pass the PennFudanPed folder")
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


def get_model(data: Path, out: Path, args) -> str:
    import train

    coco = "torchvision's COCO-pretrained Mask R-CNN R50-FPN (person -> pedestrian), not fine-tuned"
    base = ["--data", str(data), "--out", str(out)]
    if args.weights:  # the user's file: a wrong or missing one ends the demo with train.py's one-line error
        train.main(train.get_args_parser().parse_args([*base, "--weights", str(args.weights), "--steps", "0"]))
        return f"{coco}, from {args.weights}"
    if not args.offline:
        try:
            train.main(train.get_args_parser().parse_args([*base, "--pretrained", "--steps", "0"]))
            return coco
        except SystemExit as exc:
            print(f"  {exc}".replace("error: ", "no COCO weights: "))
            print("  training the offline recipe instead")
    config = train.main(train.get_args_parser().parse_args([*base, "--steps", str(args.steps)]))
    return (f"Mask R-CNN, ResNet-18 FPN with GroupNorm, trained from scratch on CPU: {config['trained_steps']} steps "
            f"(seed {config['seed']}, {config['train_seconds']}s) on the 153 images outside the test split; "
            "for COCO-pretrained numbers pass --weights FILE (see examples/pennfudan/README.md)")


def main() -> None:
    from assay.layout import default_store

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="PennFudanPed folder (PNGImages/, PedMasks/)")
    p.add_argument("--weights", type=Path, help="torchvision's maskrcnn_resnet50_fpn COCO state dict "
                   "(maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth)")
    p.add_argument("--offline", action="store_true", help="train the offline recipe even when online")
    p.add_argument("--steps", type=int, default=600, help="training steps of the offline recipe")
    p.add_argument("--store", default=default_store(), help="store URI (default: $ASSAY_STORE or .assay/store)")
    p.add_argument("--workdir", type=Path, default=Path(".assay/demo"), help="model files and the job folder")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    run(args)


def run(args) -> None:
    from assay import datasets, packages
    from assay.check import check
    from assay.runner.local import evaluate, run_job
    from assay.spec import EvaluationJob

    t0 = time.monotonic()
    work = args.workdir.resolve()
    print("[1/5] dataset")
    data, data_path = find_data(args.data, work)
    print(f"  {data_path}")
    print("[2/5] model")
    model_dir = work / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in ("handler.py", "model_def.py", "model.yaml"):
        shutil.copy(HERE / name, model_dir / name)
    model_path = get_model(data, model_dir, args)
    print(f"  {model_path}")
    print(f"[3/5] build dataset and model package into {args.store}")
    dataset = datasets.build(datasets.load_config(HERE / "dataset.yaml"), args.store, data_dir=data)
    model = packages.build(packages.load_config(model_dir / "model.yaml"), args.store)
    print(f"  dataset {dataset.name}@{dataset.version}: {dataset.samples} samples, {len(dataset.shards)} shards")
    print(f"  model {model.name}@{model.version}")
    print("[4/5] pipeline check: the ground truth as predictions, through ppl and cmp")
    checked = check(dataset.uri, evaluate, "coco", workers=1)
    print(f"  {checked.line()}")
    print(f"[5/5] assay run: {args.workers} ppl workers, then cmp")
    output = work / "jobs" / "pennfudan-demo"
    job = EvaluationJob.from_manifest({
        "apiVersion": "assay.dev/v1alpha1", "kind": "EvaluationJob", "metadata": {"name": "pennfudan-demo"},
        "spec": {"model": {"uri": model.uri}, "dataset": {"uri": dataset.uri}, "output": {"uri": str(output)},
                 "ppl": {"workers": args.workers, "batchSize": 2, "device": "auto"}}})
    result = run_job(job, overwrite=True)  # the demo's own folder: a new model replaces the last run
    summary = result.report.summary
    print()
    for iou in ("bbox", "segm"):
        print(f"COCO {iou} ({dataset.samples} images)")
        for stat in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
            value = summary.get(f"{iou}/{stat}")
            print(f"  {stat:<6} {'-' if value is None else f'{value:.3f}'}")
    print(f"\nmodel:          bbox AP {summary['bbox/AP']:.3f}, segm AP {summary['segm/AP']:.3f}"
          f"\n{checked.line()}"
          f"\n\ndata:  {data_path}\nmodel: {model_path}\nstore: {args.store} (assay dataset list, assay model list)"
          f"\njob folder: {result.job_dir}\ntotal time: {time.monotonic() - t0:.0f}s")
    if not checked.ok:
        raise SystemExit(3)


if __name__ == "__main__":
    main()
