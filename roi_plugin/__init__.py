# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""roi_plugin: a from-scratch Faster/Mask R-CNN ROI head for Detectron2.

Importing this package registers ``PluginROIHeads`` and ``GridSampleROIHeads`` in
``ROI_HEADS_REGISTRY`` and ``TwoMLPHead`` in ``ROI_BOX_HEAD_REGISTRY``.
"""
from .config import add_roi_plugin_config
from .layers import SAMPLERS, GridSampleROIPooler, ROIAlignPooler, assign_boxes_to_levels
from .predictor import FastRCNNPredictor
from . import box_head as _  # registration
from . import roi_heads as _  # registration  # noqa: F811
from .box_head import TwoMLPHead
from .roi_heads import GridSampleROIHeads, PluginROIHeads, build_plugin_pooler

__version__ = "0.1.0"

__all__ = [
    "add_roi_plugin_config",
    "ROIAlignPooler",
    "GridSampleROIPooler",
    "assign_boxes_to_levels",
    "SAMPLERS",
    "TwoMLPHead",
    "FastRCNNPredictor",
    "PluginROIHeads",
    "GridSampleROIHeads",
    "build_plugin_pooler",
]
