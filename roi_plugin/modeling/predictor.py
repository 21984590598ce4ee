# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
from torch import nn

from detectron2.config import configurable
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from ..config import roi_plugin_cfg

__all__ = ["FastRCNNPredictor"]


class FastRCNNPredictor(FastRCNNOutputLayers):
    """Sibling ``cls_score`` / ``bbox_pred`` layers on the box features.

    A :class:`FastRCNNOutputLayers`, so Detectron2's losses, box decoding, score
    threshold, NMS and ``TEST.DETECTIONS_PER_IMAGE`` apply unchanged, as do its class
    layout (K foreground classes then background, at index K) and parameter names.
    What this class owns is the initialisation, normal with configurable std and zero
    bias (0.01 / 0.001 by default, as in the Faster R-CNN paper).
    """

    @configurable
    def __init__(self, input_shape, *, cls_score_std: float = 0.01, bbox_pred_std: float = 0.001, **kwargs):
        """
        Args:
            input_shape: ShapeSpec of the box head's output, (R, D) features.
            cls_score_std, bbox_pred_std: std of the normal init of the two layers.
            **kwargs: everything :class:`FastRCNNOutputLayers` takes (num_classes,
                box2box_transform, cls_agnostic_bbox_reg, test_score_thresh, ...).
        """
        super().__init__(input_shape, **kwargs)
        nn.init.normal_(self.cls_score.weight, std=cls_score_std)
        nn.init.normal_(self.bbox_pred.weight, std=bbox_pred_std)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        plugin = roi_plugin_cfg(cfg)
        ret["cls_score_std"] = plugin.CLS_SCORE_INIT_STD
        ret["bbox_pred_std"] = plugin.BBOX_PRED_INIT_STD
        return ret
