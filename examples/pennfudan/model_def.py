"""Mask R-CNN builders shared by train.py and the handler (packaged with the model)."""

from __future__ import annotations

#: COCO's category id for "person" in torchvision's 91-class detection models.
COCO_PERSON = 1


def build_model(arch: str, num_classes: int, min_size: int = 800, max_size: int = 1333):
    """An untrained Mask R-CNN; weights are loaded separately (never downloaded here)."""
    import torchvision
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn

    if arch == "resnet50_fpn":
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                     min_size=min_size, max_size=max_size)
    if arch == "mobilenet_v3_fpn":
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.backbone_utils import mobilenet_backbone

        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

        backbone = mobilenet_backbone(backbone_name="mobilenet_v3_large", fpn=True, weights=None,
                                      trainable_layers=6)
        anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
        # a light box head and fewer sampled regions: trainable in minutes on a CPU
        return MaskRCNN(backbone, num_classes=None, rpn_anchor_generator=anchors,
                        box_head=TwoMLPHead(256 * 7 * 7, 256), box_predictor=FastRCNNPredictor(256, num_classes),
                        mask_predictor=MaskRCNNPredictor(256, 256, num_classes),
                        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
                        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
                        rpn_batch_size_per_image=128, box_batch_size_per_image=128,
                        box_detections_per_img=30, min_size=min_size, max_size=max_size)
    raise ValueError(f"unknown arch {arch!r}: use resnet50_fpn or mobilenet_v3_fpn "
                     f"(torchvision {torchvision.__version__})")
