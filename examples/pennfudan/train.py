"""Train (or export) a Mask R-CNN for PennFudanPed and write the files model.yaml packages.

    python train.py --data PATH/PennFudanPed --out .                                  # offline recipe (below)
    python train.py --data PATH/PennFudanPed --out . --pretrained --steps 0           # COCO weights as is (online)
    python train.py --data PATH/PennFudanPed --out . --weights maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --steps 0
    python train.py --data PATH/PennFudanPed --out . --weights FILE --steps 1000      # fine-tune local COCO weights

The offline recipe (the defaults): Mask R-CNN with a ResNet-18 FPN and GroupNorm, light heads, trained
from scratch on short sides 160-224 with horizontal flips, AdamW (lr 2e-3, weight decay 0.05) with a
100-step warm-up and a cosine decay, gradient clipping at 10, batch 4, a FIXED number of steps and a
fixed seed, so the same machine gives the same model however busy it is.

``--weights`` takes a state dict of torchvision's ``maskrcnn_resnet50_fpn`` with its 91 COCO classes,
i.e. the file torchvision downloads for ``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``:
https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth (170 MB).

Trains only on images outside the test split (dataset.yaml's data_filter), so evaluation never sees
training images. Writes ``maskrcnn.pt`` (a state dict) and ``config.json``.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_def import ARCHS, COCO_PERSON, build_model

COCO_URL = "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="folder with PNGImages/ and PedMasks/")
    p.add_argument("--out", default=Path("."), type=Path, help="where maskrcnn.pt and config.json go")
    p.add_argument("--arch", default="resnet18_gn_fpn", choices=ARCHS, help="for training from scratch")
    p.add_argument("--weights", type=Path, help="a local COCO maskrcnn_resnet50_fpn state dict to start from")
    p.add_argument("--pretrained", action="store_true", help="download torchvision's COCO weights (online)")
    p.add_argument("--steps", type=int, default=600, help="optimiser steps; 0 exports COCO weights as they are")
    p.add_argument("--min-size", type=int, nargs="+", default=[160, 176, 192, 208, 224],
                   help="training short sides (one picked per batch)")
    p.add_argument("--test-size", type=int, default=224, help="short side at evaluation")
    p.add_argument("--max-size", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps before the cosine decay")
    p.add_argument("--clip", type=float, default=10.0, help="gradient norm clipping")
    p.add_argument("--test-filter", default="PNGImages/*6.png", help="images held out for evaluation")
    p.add_argument("--seed", type=int, default=0)
    return p


def training_images(data: Path, test_filter: str) -> list[Path]:
    images = sorted((data / "PNGImages").glob("*.png"))
    train = [p for p in images if not fnmatch.fnmatch(f"PNGImages/{p.name}", test_filter)]
    if not train:
        raise SystemExit(f"error: no training images in {data} after excluding {test_filter!r}")
    return train


def load_example(image_path: Path):
    """(uint8 image (3, H, W), target): kept as uint8 so 153 images fit in a few hundred MB."""
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
    return torch.from_numpy(image.copy()).permute(2, 0, 1), target


def flip(image, target):
    image = image.flip(-1)
    w = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    return image, {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}


def coco_state_dict(args) -> dict:
    """The COCO weights from --weights FILE or the download; a one-line SystemExit when neither works."""
    import torch

    if args.weights:
        if not args.weights.is_file():
            raise SystemExit(f"error: --weights {args.weights}: no such file (download it from {COCO_URL})")
        try:
            state = torch.load(args.weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
            raise SystemExit(f"error: --weights {args.weights} is not a torch state dict ({type(exc).__name__}); "
                             f"expected {COCO_URL}") from None
        return state
    import socket

    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # an unreachable host must not hang the demo
    try:
        return MaskRCNN_ResNet50_FPN_Weights.COCO_V1.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - offline, proxy, DNS: all mean the same to the user
        raise SystemExit(f"error: cannot download the COCO weights ({type(exc).__name__}: {exc}); "
                         f"download {COCO_URL} elsewhere and pass --weights FILE") from None
    finally:
        socket.setdefaulttimeout(old)


def make_model(args):
    if not (args.pretrained or args.weights):
        size = {"min_size": args.test_size, "max_size": args.max_size}
        return (build_model(args.arch, 2, args.min_size, args.max_size),
                {"arch": args.arch, "num_classes": 2, "label_map": {"1": 1}, **size})
    model = build_model("resnet50_fpn", 91, 800, 1333)
    try:
        model.load_state_dict(coco_state_dict(args))
    except RuntimeError as exc:
        raise SystemExit(f"error: {args.weights} is not a maskrcnn_resnet50_fpn COCO state dict "
                         f"({str(exc).splitlines()[0]}); expected {COCO_URL}") from None
    size = {"min_size": 800, "max_size": 1333}
    if args.steps == 0:  # COCO's 91 classes kept; the handler maps "person" to "pedestrian"
        return model, {"arch": "resnet50_fpn", "num_classes": 91, "label_map": {str(COCO_PERSON): 1}, **size}
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    model.roi_heads.box_predictor = FastRCNNPredictor(model.roi_heads.box_predictor.cls_score.in_features, 2)
    model.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, 2)
    return model, {"arch": "resnet50_fpn", "num_classes": 2, "label_map": {"1": 1}, **size}


def lr_at(step: int, args) -> float:
    """Linear warm-up, then cosine decay to zero at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train(model, examples, args) -> None:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    model.train()
    rng = random.Random(args.seed)
    order: list[int] = []
    start = time.monotonic()
    for step in range(args.steps):
        if len(order) < args.batch_size:  # a fresh shuffled epoch; the tail of the last one is kept
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        picked, order = order[:args.batch_size], order[args.batch_size:]
        batch = [examples[i] if rng.random() < 0.5 else flip(*examples[i]) for i in picked]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        losses = model([x.float().div(255) for x, _ in batch], [t for _, t in batch])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            print(f"  step {step + 1}/{args.steps} loss {loss.item():.3f} ({time.monotonic() - start:.0f}s)",
                  flush=True)


def main(args) -> dict:
    import torch

    torch.manual_seed(args.seed)
    model, config = make_model(args)
    t0 = time.monotonic()
    if args.steps > 0:
        examples = [load_example(p) for p in training_images(args.data, args.test_filter)]
        print(f"  training {config['arch']} for {args.steps} steps on {len(examples)} images "
              f"(test split {args.test_filter!r} held out)", flush=True)
        train(model, examples, args)
    config.update(trained_steps=args.steps, seed=args.seed, train_seconds=round(time.monotonic() - t0))
    args.out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    (args.out / "maskrcnn.pt").write_bytes(buf.getvalue())
    (args.out / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    print(f"  wrote {args.out / 'maskrcnn.pt'} and config.json after {args.steps} steps")
    return config


if __name__ == "__main__":
    main(get_args_parser().parse_args())
