# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The Fast R-CNN box predictor (``cls_score`` / ``bbox_pred``) that roi_plugin puts in models,
upright and rotated: Detectron2's ``FastRCNNOutputLayers`` with the plugin's initialisation.
:func:`~roi_plugin.modeling.convert.predictor_from_output_layers` converts a built one."""
from torch import nn

from detectron2.config import configurable
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.rotated_fast_rcnn import RotatedFastRCNNOutputLayers

from ..config import roi_plugin_cfg

__all__ = ["FastRCNNPredictor", "RotatedFastRCNNPredictor"]


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


class RotatedFastRCNNPredictor(FastRCNNPredictor, RotatedFastRCNNOutputLayers):
    """:class:`FastRCNNPredictor` for rotated boxes.

    Nothing is written here: the method resolution order gives roi_plugin's initialisation
    (``FastRCNNPredictor.__init__``, ``ROI_PLUGIN.*_INIT_STD``), Detectron2's
    ``Box2BoxTransformRotated`` (``RotatedFastRCNNOutputLayers.from_config``, so ``bbox_pred``
    has 5 outputs per class) and Detectron2's rotated inference (rotated NMS). Parameter names
    are those of ``RotatedFastRCNNOutputLayers``.
    """
