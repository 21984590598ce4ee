# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The modules users put in models, as Detectron2's own ``modeling`` package holds its own:

* :mod:`.poolers`        ``ROIAlignPooler``, the drop-in for Detectron2's ``ROIPooler``;
* :mod:`.box_head`       ``TwoMLPHead`` (``ROI_BOX_HEAD_REGISTRY``);
* :mod:`.predictor`      ``FastRCNNPredictor`` (sibling ``cls_score`` / ``bbox_pred``);
* :mod:`.roi_heads`, :mod:`.rotated_heads`   the plugin ROI heads (``ROI_HEADS_REGISTRY``);
* :mod:`.convert`        Detectron2's built modules -> the plugin's.

Importing it registers the heads and the box head.
"""
from .box_head import TwoMLPHead
from .convert import pooler_from_roi_pooler, predictor_from_output_layers
from .poolers import SAMPLERS, GridSampleROIPooler, ROIAlignPooler
from .predictor import FastRCNNPredictor
from .roi_heads import (
    PLUGIN_HEADS,
    GridSampleROIHeads,
    PluginCascadeROIHeads,
    PluginRes5ROIHeads,
    PluginROIHeads,
    build_plugin_pooler,
)
from .rotated_heads import PluginRROIHeads, RotatedFastRCNNPredictor

__all__ = [
    "ROIAlignPooler", "GridSampleROIPooler", "SAMPLERS", "TwoMLPHead", "FastRCNNPredictor",
    "RotatedFastRCNNPredictor", "PluginROIHeads", "GridSampleROIHeads", "PluginCascadeROIHeads",
    "PluginRes5ROIHeads", "PluginRROIHeads", "PLUGIN_HEADS", "build_plugin_pooler",
    "pooler_from_roi_pooler", "predictor_from_output_layers",
]
