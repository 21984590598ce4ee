# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""roi_plugin: a from-scratch Faster/Mask R-CNN ROI head for Detectron2.

Importing this package registers ``PluginROIHeads``, ``GridSampleROIHeads``,
``PluginCascadeROIHeads`` and ``PluginRes5ROIHeads`` in ``ROI_HEADS_REGISTRY`` and ``TwoMLPHead`` in ``ROI_BOX_HEAD_REGISTRY``.
"""
from .config import add_roi_plugin_config, roi_plugin_cfg
from .pooler import SAMPLERS, GridSampleROIPooler, ROIAlignPooler, assign_boxes_to_levels
from .predictor import FastRCNNPredictor
from . import box_head as _  # registration
from . import roi_heads as _  # registration  # noqa: F811
from .box_head import TwoMLPHead
from .roi_heads import (
    PLUGIN_HEADS,
    GridSampleROIHeads,
    PluginCascadeROIHeads,
    PluginRes5ROIHeads,
    PluginROIHeads,
    build_plugin_pooler,
)
from .convert import pooler_from_roi_pooler, predictor_from_output_layers

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
    "PluginCascadeROIHeads",
    "PluginRes5ROIHeads",
    "PLUGIN_HEADS",
    "build_plugin_pooler",
    "pooler_from_roi_pooler",
    "predictor_from_output_layers",
    "roi_plugin_cfg",
]
