"""assay handler for Mask R-CNN on PennFudanPed: decode PNGs, predict boxes and RLE instance masks.

The package holds ``config.json`` (arch, num_classes, input size, label map) and ``maskrcnn.pt`` (a
state dict, loaded with weights_only=True). A COCO-trained model is used as is through its label map
(COCO "person" -> 1 "pedestrian"); detections of other classes are dropped.
"""

from __future__ import annotations

import io
import json

import numpy as np

from assay.handler import Handler, rle_encode


class MaskRCNNHandler(Handler):
    def load(self, model_dir, device):
        import torch
        from model_def import build_model

        self.config = json.loads((model_dir / "config.json").read_text())
        self.device = device
        self.model = build_model(self.config["arch"], self.config["num_classes"],
                                 self.config.get("min_size", 800), self.config.get("max_size", 1333))
        state = torch.load(model_dir / "maskrcnn.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        # optional caps on the output (config.json): detections per image and the score threshold
        if "box_detections_per_img" in self.config:
            self.model.roi_heads.detections_per_img = int(self.config["box_detections_per_img"])
        if "box_score_thresh" in self.config:
            self.model.roi_heads.score_thresh = float(self.config["box_score_thresh"])
        self.model.eval().to(device)
        # label map: model class id -> dataset category id; classes not in it are dropped
        self.label_map = {int(k): int(v) for k, v in self.config.get("label_map", {"1": 1}).items()}

    def decode(self, sample):
        import torch
        from PIL import Image

        image = np.asarray(Image.open(io.BytesIO(sample.files["png"])).convert("RGB"))
        return torch.from_numpy(image.copy()).permute(2, 0, 1)  # uint8 (3, H, W); scaled on the device

    def predict(self, batch):
        import torch

        with torch.inference_mode():
            inputs = [x.to(self.device, non_blocking=True).float().div_(255) for x in batch]
            outputs = self.model(inputs)
        predictions = []
        for out in outputs:
            raw = out["labels"].cpu().tolist()
            keep = torch.tensor([lbl in self.label_map for lbl in raw], dtype=torch.bool)
            labels = torch.tensor([self.label_map[lbl] for lbl in raw if lbl in self.label_map], dtype=torch.int64)
            predictions.append({
                "boxes": out["boxes"][keep],
                "scores": out["scores"][keep],
                "labels": labels,
                "masks": rle_encode(out["masks"][keep][:, 0], threshold=0.5),
            })
        return predictions
