# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Rotated-box ROI heads: Detectron2's ``RROIHeads`` with roi_plugin's pooler and predictor.

``RROIHeads`` (Rotated Fast R-CNN: boxes ``(x_ctr, y_ctr, w, h, angle_degrees)``) builds a
``ROIPooler(pooler_type="ROIAlignRotated")`` in ``_init_box_head``, whose kernel exists only in
Detectron2's compiled ``_C``. :class:`PluginRROIHeads` overrides that hook only: the box pooler
becomes roi_plugin's pure-PyTorch pooler in ``ROIAlignRotated`` mode (same sampler choice as
:class:`~roi_plugin.modeling.roi_heads.PluginROIHeads`, ``MODEL.ROI_PLUGIN.SAMPLER``) and the predictor
becomes :class:`RotatedFastRCNNPredictor`. Proposal matching, sampling, losses and rotated
inference stay Detectron2's; the rotated IoU and NMS they call come from
``roi_plugin/layers/rotated_ops.py`` where ``_C`` is missing.
"""
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads.rotated_fast_rcnn import RotatedFastRCNNOutputLayers, RROIHeads

from ..config import roi_plugin_cfg
from .predictor import FastRCNNPredictor
from .roi_heads import build_plugin_pooler

__all__ = ["PluginRROIHeads", "RotatedFastRCNNPredictor"]


class RotatedFastRCNNPredictor(FastRCNNPredictor, RotatedFastRCNNOutputLayers):
    """:class:`FastRCNNPredictor` for rotated boxes.

    Nothing is written here: the method resolution order gives roi_plugin's initialisation
    (``FastRCNNPredictor.__init__``, ``ROI_PLUGIN.*_INIT_STD``), Detectron2's
    ``Box2BoxTransformRotated`` (``RotatedFastRCNNOutputLayers.from_config``, so ``bbox_pred``
    has 5 outputs per class) and Detectron2's rotated inference (rotated NMS). Parameter names
    are those of ``RotatedFastRCNNOutputLayers``.
    """


@ROI_HEADS_REGISTRY.register()
class PluginRROIHeads(RROIHeads):
    """``RROIHeads`` with roi_plugin's ``ROIAlignRotated`` pooler and :class:`RotatedFastRCNNPredictor`.

    Config: ``MODEL.ROI_BOX_HEAD.POOLER_TYPE: "ROIAlignRotated"`` (required by ``RROIHeads``),
    ``MODEL.ROI_PLUGIN.SAMPLER`` (``gather`` or ``grid_sample``), any registered box head
    (``TwoMLPHead`` keeps checkpoints compatible with ``FastRCNNConvFCHead``).
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_pooler"] = build_plugin_pooler(
            cfg, cfg.MODEL.ROI_BOX_HEAD, input_shape, roi_plugin_cfg(cfg).SAMPLER
        )
        ret["box_predictor"] = RotatedFastRCNNPredictor(cfg, ret["box_head"].output_shape)
        return ret
