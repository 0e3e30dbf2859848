"""Mask R-CNN builders shared by train.py and the handler (packaged with the model)."""

from __future__ import annotations

#: COCO's category id for "person" in torchvision's 91-class detection models.
COCO_PERSON = 1
ARCHS = ("resnet50_fpn", "resnet18_gn_fpn", "mobilenet_v3_fpn")


def build_model(arch: str, num_classes: int, min_size: int | list[int] = 800, max_size: int = 1333):
    """An untrained Mask R-CNN; weights are loaded separately (never downloaded here).

    ``min_size`` may be a list: in training mode torchvision then picks one size per batch (multi-scale).
    """
    import torchvision
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    min_size = tuple(min_size) if isinstance(min_size, list | tuple) else min_size
    if arch == "resnet50_fpn":
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                     min_size=min_size, max_size=max_size)
    if arch == "resnet18_gn_fpn":
        return _resnet18_gn_fpn(num_classes, min_size, max_size)
    if arch == "mobilenet_v3_fpn":
        return _mobilenet_v3_fpn(num_classes, min_size, max_size)
    raise ValueError(f"unknown arch {arch!r}: use one of {', '.join(ARCHS)} (torchvision {torchvision.__version__})")


def _gn(channels: int):
    import torch

    # GroupNorm, not BatchNorm: with 4 images per batch BatchNorm's statistics are noise, and an
    # untrained BatchNorm was the main reason the first CPU recipe scored AP ~0.01 (docs/calibration)
    return torch.nn.GroupNorm(min(32, channels // 2), channels)


def _resnet18_gn_fpn(num_classes: int, min_size, max_size: int):
    """The offline demo model: ResNet-18 + 128-channel FPN, GroupNorm everywhere, light heads.

    Sized for training from scratch in minutes on 2 CPU cores (examples/pennfudan/README.md has the
    recipe and its AP): the backbone is a third of a step, so the heads and proposals are trimmed too.
    """
    from torchvision.models import resnet18
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    body = resnet18(weights=None, norm_layer=_gn)
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               [64, 128, 256, 512], 128, extra_blocks=LastLevelMaxPool(), norm_layer=_gn)
    return MaskRCNN(backbone, num_classes=None,
                    box_head=TwoMLPHead(128 * 7 * 7, 256), box_predictor=FastRCNNPredictor(256, num_classes),
                    mask_head=MaskRCNNHeads(128, [64, 64, 64, 64], 1, norm_layer=_gn),
                    mask_predictor=MaskRCNNPredictor(64, 64, num_classes),
                    rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
                    rpn_pre_nms_top_n_test=600, rpn_post_nms_top_n_test=300,
                    box_batch_size_per_image=128, min_size=min_size, max_size=max_size)


def _mobilenet_v3_fpn(num_classes: int, min_size, max_size: int):
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import mobilenet_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    backbone = mobilenet_backbone(backbone_name="mobilenet_v3_large", fpn=True, weights=None, trainable_layers=6)
    anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
    return MaskRCNN(backbone, num_classes=None, rpn_anchor_generator=anchors,
                    box_head=TwoMLPHead(256 * 7 * 7, 256), box_predictor=FastRCNNPredictor(256, num_classes),
                    mask_predictor=MaskRCNNPredictor(256, 256, num_classes),
                    rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
                    rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
                    rpn_batch_size_per_image=128, box_batch_size_per_image=128,
                    box_detections_per_img=30, min_size=min_size, max_size=max_size)
