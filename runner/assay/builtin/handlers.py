"""The handlers of built-in packages: torchvision detection (coco predictions) and classification.

Both read the resolved config (``assay-builtin.json``) and the weights from the unpacked package, find
the image through ``Sample.image()`` (so any source that names its image by format works), and convert
it to RGB, so greyscale images feed 3-channel models.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from assay.builtin import models
from assay.builtin import spec as builtin_spec
from assay.handler import Handler, rle_encode
from assay.shards import Sample

if TYPE_CHECKING:
    import torch
    from PIL import Image


def _rgb(sample: Sample) -> Image.Image:
    from PIL import Image

    return Image.open(io.BytesIO(sample.image()[1])).convert("RGB")


class _Torchvision(Handler):
    def load(self, model_dir: Path, device: torch.device) -> None:
        self.spec = builtin_spec.read(model_dir)
        self.device = device
        where = f"{model_dir}/{self.spec['weights']}"
        self.model = models.instantiate(self.spec, Path(model_dir) / self.spec["weights"], where)
        self.model.eval().to(device)
        label_map = self.spec.get("label_map")
        self.label_map = None if label_map is None else {int(k): int(v) for k, v in label_map.items()}


class TorchvisionDetector(_Torchvision):
    """Faster/Mask R-CNN, RetinaNet, FCOS, SSD: boxes xyxy, scores, labels, and RLE masks when the model has them."""

    def load(self, model_dir: Path, device: torch.device) -> None:
        super().load(model_dir, device)
        # the thresholds live on the model, so torchvision applies them before its own top-k
        heads = getattr(self.model, "roi_heads", self.model)
        if self.spec.get("score_threshold") is not None:
            heads.score_thresh = self.spec["score_threshold"]
        if self.spec.get("detections_per_image") is not None:
            heads.detections_per_img = self.spec["detections_per_image"]

    def decode(self, sample: Sample) -> torch.Tensor:
        import torch

        # uint8 until predict: a quarter of the bytes through the prefetch queue; scaled on the device
        return torch.from_numpy(np.asarray(_rgb(sample)).copy()).permute(2, 0, 1)

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            outputs = self.model([x.to(self.device, non_blocking=True).float().div_(255) for x in batch])
        predictions = []
        for out in outputs:
            raw = out["labels"].tolist()
            if self.label_map is None:
                keep = torch.ones(len(raw), dtype=torch.bool)
                labels = out["labels"]
            else:  # classes the map leaves out are dropped
                keep = torch.tensor([v in self.label_map for v in raw], dtype=torch.bool)
                labels = torch.tensor([self.label_map[v] for v in raw if v in self.label_map], dtype=torch.int64)
            prediction = {"boxes": out["boxes"][keep], "scores": out["scores"][keep], "labels": labels}
            if "masks" in out:
                prediction["masks"] = rle_encode(out["masks"][keep][:, 0], threshold=0.5)
            predictions.append(prediction)
        return predictions


class TorchvisionClassifier(_Torchvision):
    """Image classifiers: the class index and the softmax scores over the dataset's classes."""

    def load(self, model_dir: Path, device: torch.device) -> None:
        super().load(model_dir, device)
        from torchvision.transforms import InterpolationMode

        self.input = self.spec["input"]
        self.interpolation = InterpolationMode(self.input["interpolation"])
        if self.label_map is not None:
            import torch

            # the prediction is the dataset class of the likeliest mapped model class; scores are not
            # returned: their length must be the dataset's class count, which the package does not know
            # (ROC AUC is then skipped)
            self.mapped = torch.tensor(sorted(self.label_map), device=device)

    def decode(self, sample: Sample) -> torch.Tensor:
        """torchvision's ImageClassification preset: resize the short side, centre-crop, scale, normalise."""
        import torch
        from torchvision.transforms import functional as F

        image = F.resize(_rgb(sample), [self.input["resize"]], self.interpolation, antialias=True)
        image = F.center_crop(image, [self.input["crop"]])
        tensor = F.convert_image_dtype(F.pil_to_tensor(image), torch.float)
        return F.normalize(tensor, self.input["mean"], self.input["std"])

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            scores = torch.softmax(self.model(torch.stack(batch).to(self.device)).float(), dim=1)
            if self.label_map is not None:
                best = self.mapped[scores[:, self.mapped].argmax(dim=1)].tolist()
                return [{"label": np.int64(self.label_map[b])} for b in best]
        scores = scores.cpu().numpy()
        return [{"label": np.int64(s.argmax()), "scores": s} for s in scores]
