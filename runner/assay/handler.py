"""The handler API: how a model package tells assay to decode samples and predict.

A complete handler (examples/pennfudan/handler.py is a real one)::

    import io, torch
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor
    from assay.handler import Handler, rle_encode

    class MaskRCNNHandler(Handler):
        def load(self, model_dir, device):            # once per worker
            from torchvision.models.detection import maskrcnn_resnet50_fpn
            self.device = device
            self.model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
            state = torch.load(model_dir / "maskrcnn.pt", map_location="cpu", weights_only=True)
            self.model.load_state_dict(state)
            self.model.eval().to(device)

        def decode(self, sample):                     # in prefetch threads, overlapping predict()
            image = Image.open(io.BytesIO(sample.files["png"])).convert("RGB")
            return pil_to_tensor(image).float().div_(255)          # (3, H, W) float32

        def predict(self, batch):                     # a list of decode() outputs, at most batchSize long
            with torch.inference_mode():
                outputs = self.model([x.to(self.device) for x in batch])
            return [{"boxes": o["boxes"], "scores": o["scores"], "labels": o["labels"],
                     "masks": rle_encode(o["masks"][:, 0], threshold=0.5)} for o in outputs]

Rules the runner relies on:
- ``predict`` returns exactly one dict per input, in input order; the runner keys each by the sample's
  id, never by batch position. The last batch of a shard may be shorter than the batch size.
- Values may be torch tensors, numpy arrays, Python or numpy scalars, strings, or ``RLEMasks``.
  Tensors are moved to the CPU at once; arrays are stored with their dtype and shape, exactly.
- Instance masks should be returned through ``rle_encode``: COCO RLE is computed in the worker, so
  results stay small and cmp never handles pixels.
- Heavy imports belong in ``load``, not at module top (importing a handler must stay cheap).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from assay.shards import Sample


@dataclass(frozen=True)
class RLEMasks:
    """N instance masks of one image as COCO compressed RLE (``size`` is [H, W], ``counts`` bytes)."""

    size: tuple[int, int]
    counts: tuple[bytes, ...]

    def __len__(self) -> int:
        return len(self.counts)

    def to_coco(self) -> list[dict[str, Any]]:
        return [{"size": list(self.size), "counts": c} for c in self.counts]

    def decode(self) -> np.ndarray:
        """(N, H, W) uint8 masks."""
        from pycocotools import mask as mask_util

        if not self.counts:
            return np.zeros((0, *self.size), np.uint8)
        return np.moveaxis(mask_util.decode(self.to_coco()), -1, 0)


def rle_encode(masks: Any, threshold: float = 0.5) -> RLEMasks:
    """Encode (N, H, W) masks (bool, or probabilities thresholded at ``threshold``) as COCO RLE.

    Float masks must be thresholded, not cast: casting probabilities in [0, 1) to uint8 gives empty
    masks (the bug behind Starwhale's segm AP of 0.000).
    """
    from pycocotools import mask as mask_util

    if hasattr(masks, "detach"):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"rle_encode expects (N, H, W) or (N, 1, H, W) masks, got shape {masks.shape}")
    binary = masks if masks.dtype == np.bool_ else masks >= threshold if masks.dtype.kind == "f" else masks != 0
    size = (int(masks.shape[1]), int(masks.shape[2]))
    if masks.shape[0] == 0:
        return RLEMasks(size, ())
    encoded = mask_util.encode(np.asfortranarray(np.moveaxis(binary.astype(np.uint8), 0, -1)))
    return RLEMasks(size, tuple(e["counts"] for e in encoded))


class Handler:
    """Base class of model handlers: ``load`` once, then ``decode`` samples and ``predict`` batches.

    Optionally ``evaluate`` computes the metrics itself when model.yaml says ``run.evaluator: handler``.
    """

    def load(self, model_dir: Path, device: Any) -> None:
        """Build the model from files in ``model_dir`` (the unpacked package) onto ``device`` (a torch.device)."""
        raise NotImplementedError

    def decode(self, sample: Sample) -> Any:
        """Turn a sample's raw files into a model input; runs in background threads. Default: the sample."""
        return sample

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        """Predict a batch of decoded inputs: one dict per input, same order."""
        raise NotImplementedError

    def evaluate(self, records: Iterable[tuple[str, dict[str, Any], dict[str, Any]]]) -> dict[str, float]:
        """Metrics from (sample_id, label, prediction) records; only used with ``run.evaluator: handler``."""
        raise NotImplementedError(f"{type(self).__name__} has no evaluate(); set run.evaluator in model.yaml")
