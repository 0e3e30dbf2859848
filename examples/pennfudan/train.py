"""Train (or export) a Mask R-CNN for PennFudanPed and write the files model.yaml packages.

    python train.py --data PATH/PennFudanPed --out . --arch mobilenet_v3_fpn --time-budget 240
    python train.py --data PATH/PennFudanPed --out . --pretrained --epochs 0      # COCO weights as is (online)
    python train.py --data PATH/PennFudanPed --out . --weights coco.pth --epochs 2 # fine-tune local weights

Trains only on images outside the test split (dataset.yaml's data_filter), so evaluation never sees
training images. Writes ``maskrcnn.pt`` (a state dict) and ``config.json``.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_def import COCO_PERSON, build_model  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="folder with PNGImages/ and PedMasks/")
    p.add_argument("--out", default=Path("."), type=Path, help="where maskrcnn.pt and config.json go")
    p.add_argument("--arch", default="resnet50_fpn", choices=["resnet50_fpn", "mobilenet_v3_fpn"])
    p.add_argument("--weights", type=Path, help="a local COCO Mask R-CNN state dict to start from")
    p.add_argument("--pretrained", action="store_true", help="download torchvision's COCO weights (online)")
    p.add_argument("--epochs", type=int, default=10, help="0 exports COCO weights with person -> pedestrian")
    p.add_argument("--time-budget", type=float, default=0, help="stop training after this many seconds")
    p.add_argument("--min-size", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--test-filter", default="PNGImages/*6.png", help="images held out for evaluation")
    p.add_argument("--seed", type=int, default=0)
    return p


def training_images(data: Path, test_filter: str) -> list[Path]:
    images = sorted((data / "PNGImages").glob("*.png"))
    train = [p for p in images if not fnmatch.fnmatch(f"PNGImages/{p.name}", test_filter)]
    if not train:
        raise SystemExit(f"no training images left in {data} after excluding {test_filter!r}")
    return train


def load_example(image_path: Path):
    import torch
    from PIL import Image

    image = np.asarray(Image.open(image_path).convert("RGB"))
    mask = np.asarray(Image.open(image_path.parent.parent / "PedMasks" / f"{image_path.stem}_mask.png"))
    ids = [i for i in np.unique(mask) if i != 0]
    masks = np.stack([mask == i for i in ids]).astype(np.uint8)
    boxes = []
    for m in masks:
        ys, xs = np.where(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])  # same extent as COCO's toBbox
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.ones(len(ids), dtype=torch.int64),
              "masks": torch.from_numpy(masks)}
    return torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255, target


def flip(image, target):
    image = image.flip(-1)
    w = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    return image, {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}


def make_model(args):
    import torch

    if args.pretrained or args.weights:
        model = build_model("resnet50_fpn", 91, args.min_size, args.max_size)
        if args.weights:
            model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
        else:
            from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

            state = MaskRCNN_ResNet50_FPN_Weights.DEFAULT.get_state_dict(progress=True)
            model.load_state_dict(state)
        if args.epochs == 0:
            return model, {"arch": "resnet50_fpn", "num_classes": 91, "label_map": {str(COCO_PERSON): 1}}
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
        from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

        model.roi_heads.box_predictor = FastRCNNPredictor(model.roi_heads.box_predictor.cls_score.in_features, 2)
        model.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, 2)
        return model, {"arch": "resnet50_fpn", "num_classes": 2, "label_map": {"1": 1}}
    return build_model(args.arch, 2, args.min_size, args.max_size), {"arch": args.arch, "num_classes": 2,
                                                                      "label_map": {"1": 1}}


def train(model, examples, args) -> int:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    rng = random.Random(args.seed)
    start, steps = time.monotonic(), 0
    for epoch in range(args.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for b in range(0, len(order), args.batch_size):
            batch = [examples[i] if rng.random() < 0.5 else flip(*examples[i]) for i in order[b:b + args.batch_size]]
            losses = model([x for x, _ in batch], [t for _, t in batch])
            loss = sum(losses.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if steps % 10 == 0:
                print(f"epoch {epoch} step {steps} loss {loss.item():.3f} "
                      f"({time.monotonic() - start:.0f}s)", flush=True)
            if args.time_budget and time.monotonic() - start > args.time_budget:
                return steps
    return steps


def main(args) -> None:
    import torch

    torch.manual_seed(args.seed)
    model, config = make_model(args)
    config.update(min_size=args.min_size, max_size=args.max_size)
    steps = 0
    if args.epochs > 0:
        examples = [load_example(p) for p in training_images(args.data, args.test_filter)]
        print(f"training {config['arch']} on {len(examples)} images (test split {args.test_filter!r} held out)")
        steps = train(model, examples, args)
    config["trained_steps"] = steps
    args.out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    (args.out / "maskrcnn.pt").write_bytes(buf.getvalue())
    (args.out / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    print(f"wrote {args.out / 'maskrcnn.pt'} and config.json after {steps} steps")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
