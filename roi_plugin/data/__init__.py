# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Datasets. Importing this package registers ``shapes_train`` and ``shapes_val``."""
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
    "SHAPES_CLASSES",
    "ensure_shapes_split",
    "generate_shapes_image",
    "register_shapes",
    "register_shapes_instances",
    "shapes_root",
    "verify_shapes_split",
]
