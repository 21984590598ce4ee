# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Compatibility module: the pooler now lives in :mod:`roi_plugin.layers`; import from there."""
from .layers import EXPORT_MAX_GRID, SAMPLERS, GridSampleROIPooler, ROIAlignPooler, assign_boxes_to_levels

__all__ = ["ROIAlignPooler", "GridSampleROIPooler", "assign_boxes_to_levels", "SAMPLERS", "EXPORT_MAX_GRID"]
