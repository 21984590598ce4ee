# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The modules users put in models, as Detectron2's own ``modeling`` package holds its own:

* :mod:`.poolers`        ``ROIAlignPooler``, the drop-in for Detectron2's ``ROIPooler``;
* :mod:`.box_head`       ``TwoMLPHead`` (``ROI_BOX_HEAD_REGISTRY``);
* :mod:`.predictor`      ``FastRCNNPredictor`` (sibling ``cls_score`` / ``bbox_pred``);
* :mod:`.convert`        ``convert_model``: Detectron2's built modules -> the plugin's, in any
                         model; the one swapping mechanism;
* :mod:`.roi_heads`, :mod:`.rotated_heads`   the plugin ROI heads (``ROI_HEADS_REGISTRY``), each
                         a built-in class converted as it is built;
* :mod:`.meta_arch`      ``ROIPluginModel`` (``META_ARCH_REGISTRY``): any meta-architecture,
                         built and converted, from a config alone.

Importing it registers the heads, the box head and the meta-architecture.
"""
from .box_head import TwoMLPHead
from .convert import (
    Swap,
    apply_conversion,
    apply_plugin_keys,
    convert_model,
    plan_conversion,
    pooler_from_roi_pooler,
    predictor_from_output_layers,
)
from .meta_arch import ROIPluginModel
from .poolers import SAMPLERS, GridSampleROIPooler, ROIAlignPooler
from .predictor import FastRCNNPredictor, RotatedFastRCNNPredictor
from .roi_heads import (
    PLUGIN_HEADS,
    GridSampleROIHeads,
    PluginCascadeROIHeads,
    PluginRes5ROIHeads,
    PluginHeadsMixin,
    PluginROIHeads,
    build_plugin_pooler,
)
from .rotated_heads import PluginRROIHeads

__all__ = [
    "ROIAlignPooler", "GridSampleROIPooler", "SAMPLERS", "TwoMLPHead", "FastRCNNPredictor",
    "RotatedFastRCNNPredictor", "PluginROIHeads", "GridSampleROIHeads", "PluginCascadeROIHeads",
    "PluginRes5ROIHeads", "PluginRROIHeads", "PLUGIN_HEADS", "build_plugin_pooler",
    "pooler_from_roi_pooler", "predictor_from_output_layers", "convert_model", "plan_conversion",
    "apply_conversion", "apply_plugin_keys", "Swap", "PluginHeadsMixin", "ROIPluginModel",
]
