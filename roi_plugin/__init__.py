# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""roi_plugin: a from-scratch Faster/Mask R-CNN ROI head for Detectron2.

Importing this package registers ``PluginROIHeads``, ``GridSampleROIHeads``,
``PluginCascadeROIHeads``, ``PluginRes5ROIHeads`` and ``PluginRROIHeads`` (rotated boxes) in
``ROI_HEADS_REGISTRY``, ``TwoMLPHead`` in ``ROI_BOX_HEAD_REGISTRY`` and ``ROIPluginModel`` (any
meta-architecture, converted) in ``META_ARCH_REGISTRY``. ``convert_model(model)`` converts any
built model: every Detectron2 ``ROIPooler`` and plain Fast R-CNN predictor becomes roi_plugin's. It also defines the
operators ``detectron2::box_iou_rotated`` / ``detectron2::nms_rotated`` in pure PyTorch where
Detectron2 has no compiled ``_C`` (see ``roi_plugin/layers/rotated_ops.py``).

Layout: ``layers/`` the ROIAlign operators, ``modeling/`` the modules put in models (pooler,
heads, predictors, conversion), ``export/`` deployment, ``engine/`` training and demo glue,
``data/`` datasets; see docs/ARCHITECTURE.md.
"""
from .config import add_roi_plugin_config, roi_plugin_cfg
from .layers import assign_boxes_to_levels
from .layers.rotated_ops import register_rotated_ops

register_rotated_ops()  # no-op where detectron2's compiled _C provides the operators
from .modeling import (  # noqa: E402  (importing it registers the heads, box head, meta-architecture)
    PLUGIN_HEADS,
    SAMPLERS,
    FastRCNNPredictor,
    GridSampleROIHeads,
    GridSampleROIPooler,
    PluginCascadeROIHeads,
    PluginRes5ROIHeads,
    PluginROIHeads,
    PluginRROIHeads,
    ROIAlignPooler,
    RotatedFastRCNNPredictor,
    TwoMLPHead,
    build_plugin_pooler,
    convert_model,
    plan_conversion,
    pooler_from_roi_pooler,
    predictor_from_output_layers,
)

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
    "PluginRROIHeads",
    "RotatedFastRCNNPredictor",
    "register_rotated_ops",
    "pooler_from_roi_pooler",
    "predictor_from_output_layers",
    "roi_plugin_cfg",
    "convert_model",
    "plan_conversion",
]
