# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Datasets. Importing this package registers ``shapes_train`` and ``shapes_val``;
:func:`register_coco_dataset` registers a checked COCO-format dataset of one's own."""
from .coco import CocoDatasetError, check_coco_json, register_coco_dataset
from .shapes import (
    SHAPES_CLASSES,
    ensure_shapes_split,
    generate_shapes_image,
    register_shapes,
    register_shapes_instances,
    shapes_root,
    verify_shapes_split,
)

register_shapes()

__all__ = [
    "CocoDatasetError",
    "check_coco_json",
    "register_coco_dataset",
    "SHAPES_CLASSES",
    "ensure_shapes_split",
    "generate_shapes_image",
    "register_shapes",
    "register_shapes_instances",
    "shapes_root",
    "verify_shapes_split",
]
