# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Datasets. Importing this package registers ``shapes_train`` / ``shapes_val`` (upright boxes and
masks) and ``shapes_rotated_train`` / ``shapes_rotated_val`` (rotated boxes);
:func:`register_coco_dataset` registers a checked COCO-format dataset of one's own (upright or
rotated boxes); :class:`RotatedDatasetMapper` maps rotated annotations for training.
"""
from .coco import CocoDatasetError, check_coco_json, load_rotated_coco_json, register_coco_dataset
from .rotated_mapper import RotatedDatasetMapper
from .shapes import (
    SHAPES_CLASSES,
    ensure_shapes_split,
    generate_shapes_image,
    register_shapes,
    register_shapes_instances,
    shapes_root,
    verify_shapes_split,
)
from .shapes_rotated import (
    ROTATED_CLASSES,
    ensure_rotated_split,
    generate_rotated_image,
    register_shapes_rotated,
    register_shapes_rotated_instances,
)

register_shapes()
register_shapes_rotated()

__all__ = [
    "CocoDatasetError",
    "check_coco_json",
    "load_rotated_coco_json",
    "register_coco_dataset",
    "RotatedDatasetMapper",
    "SHAPES_CLASSES",
    "ensure_shapes_split",
    "generate_shapes_image",
    "register_shapes",
    "register_shapes_instances",
    "shapes_root",
    "verify_shapes_split",
    "ROTATED_CLASSES",
    "ensure_rotated_split",
    "generate_rotated_image",
    "register_shapes_rotated",
    "register_shapes_rotated_instances",
]
