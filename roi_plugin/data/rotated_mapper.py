# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Detectron2's ``DatasetMapper`` for rotated boxes (Detectron2's own mapper is upright only).

:class:`RotatedDatasetMapper` is ``DatasetMapper`` (image reading, the augmentations of the
config, tensors) with its one annotation hook, ``_transform_annotations``, overridden: each
``bbox`` is converted to ``BoxMode.XYWHA_ABS`` (``[x_ctr, y_ctr, w, h, angle]``, degrees,
counter-clockwise), the image's transforms are applied to it by Detectron2's
``TransformList.apply_rotated_box`` (a horizontal flip negates the angle and mirrors the centre;
a resize scales centre and sides, exactly when the x and y scales are equal, as
``ResizeShortestEdge``'s are; for unequal scales Detectron2's rule, ``RotatedBoxes.scale``,
turns the box as its height vector turns, which for a long box is off: a 4:1 box at -17.7
degrees stretched 1.25 x 0.75 gets -28.0 where its long sides run at -10.8), the box is put in
the long-side form (below), and
Detectron2's ``annotations_to_instances_rotated`` and ``filter_empty_instances`` make the
``Instances`` with ``RotatedBoxes``.

**Long-side form.** A rotated box and the same box with ``w``/``h`` swapped and 90 degrees
added, or with 180 degrees added, are one rectangle. Detectron2's box regression tells them
apart (its angle delta is periodic in 360 degrees, not 180), so one rectangle must have one
form: ``w >= h`` and ``angle`` in ``[-90, 90)`` (what the shapes_rotated annotations use, and
what a flip would otherwise break: -30 becomes 30, but -90 becomes 90). configs/rotated/ puts
its anchors at -75, -45, ..., 75 degrees, wider than tall, so that the anchor nearest to any such
box never lies across the +-90 cut.

Augmentations without a rotated-box rule in Detectron2 (crops, vertical flips) raise
``NotImplementedError`` from the transform; ``INPUT.CROP.ENABLED`` is refused when the
mapper is built.
"""
import copy
from typing import List

import numpy as np

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.structures import BoxMode

__all__ = ["RotatedDatasetMapper", "long_side_form", "transform_rotated_annotation"]


def long_side_form(boxes):
    """(N, 5) rotated boxes as the same rectangles with ``w >= h`` and angle in ``[-90, 90)``."""
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 5)
    tall = boxes[:, 3] > boxes[:, 2]
    boxes[tall, 2], boxes[tall, 3] = boxes[tall, 3].copy(), boxes[tall, 2].copy()
    boxes[tall, 4] += 90.0
    boxes[:, 4] = (boxes[:, 4] + 90.0) % 180.0 - 90.0
    return boxes


def transform_rotated_annotation(annotation, transforms):
    """One annotation with its ``bbox`` in ``XYWHA_ABS``, moved by ``transforms`` (a
    ``TransformList``) and put in the long-side form; other keys are kept."""
    box = BoxMode.convert(list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYWHA_ABS)
    box = transforms.apply_rotated_box(np.asarray([box], dtype=np.float64))
    annotation = dict(annotation, bbox=long_side_form(box)[0].tolist(), bbox_mode=BoxMode.XYWHA_ABS)
    return annotation


class RotatedDatasetMapper(DatasetMapper):
    """``DatasetMapper`` whose instances are ``RotatedBoxes`` (``gt_boxes``) and ``gt_classes``.

    Annotations may be in any box mode Detectron2 converts to ``XYWHA_ABS`` (rotated ones, or
    ``XYWH_ABS`` upright ones, which become angle 0). Masks and keypoints are not supported
    (Detectron2's rotated heads predict boxes only) and are dropped.
    """

    @configurable
    def __init__(self, is_train: bool, **kwargs):
        super().__init__(is_train, **kwargs)
        if self.use_instance_mask or self.use_keypoint:
            raise ValueError("RotatedDatasetMapper: rotated boxes come without masks or keypoints "
                             "(set MODEL.MASK_ON and MODEL.KEYPOINT_ON to False)")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        if is_train and cfg.INPUT.CROP.ENABLED:
            raise ValueError("INPUT.CROP.ENABLED: Detectron2 has no rule to crop rotated boxes "
                             "(CropTransform.apply_rotated_box); set INPUT.CROP.ENABLED False")
        return super().from_config(cfg, is_train)

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        annos: List[dict] = [
            transform_rotated_annotation(copy.copy(obj), transforms)
            for obj in dataset_dict.pop("annotations")
            if obj.get("iscrowd", 0) == 0
        ]
        instances = utils.annotations_to_instances_rotated(annos, image_shape)
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
