# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Level routing: which pyramid level pools which box.

The FPN paper (Lin et al., eq. 1) pools a box of ``w x h`` input pixels from level

    k = clip(k0 + floor(log2(sqrt(w * h) / 224)), k_min, k_max)

so that a 224 x 224 box (an ImageNet crop) lands on ``k0`` (P4) and every halving of the
box side moves it one level finer. The pooler's levels are given as scales ``1 / 2^k``.
"""
import math
from typing import Sequence, Tuple

import torch

__all__ = ["assign_boxes_to_levels", "pyramid_levels", "route_boxes"]


def assign_boxes_to_levels(
    boxes: torch.Tensor,
    min_level: int,
    max_level: int,
    canonical_box_size: float,
    canonical_level: int,
) -> torch.Tensor:
    """FPN level rule (Lin et al., eq. 1): ``k = clip(k0 + floor(log2(sqrt(wh) / 224)), k_min, k_max)``.

    The arithmetic (area as ``w*h``, the ``1e-8`` inside the log) is Detectron2's, so a box
    on a level boundary lands where Detectron2 puts it.

    Args:
        boxes: (N, 4) boxes ``x1, y1, x2, y2`` in input-image pixels, or (N, 5) rotated boxes
            ``x_ctr, y_ctr, w, h, angle``, whose area is ``w * h`` (``RotatedBoxes.area()``,
            as Detectron2's ``ROIPooler`` computes it).
    Returns:
        (N,) int64 level index relative to ``min_level`` (0 for P{min_level}).
    """
    if boxes.shape[1] == 5:
        area = boxes[:, 2] * boxes[:, 3]
    else:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_box_size + 1e-8))
    level = torch.clamp(level, min=min_level, max=max_level)
    return level.to(torch.int64) - min_level


def pyramid_levels(scales: Sequence[float]) -> Tuple[int, int]:
    """``(k_min, k_max)`` of levels given by their scales ``1/2^k``, finest first.

    Raises ValueError unless the scales are consecutive powers of two.
    """
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")
    levels = [-math.log2(s) for s in scales]
    if any(not math.isclose(lv, round(lv), abs_tol=1e-6) for lv in levels):
        raise ValueError(f"every scale must be 1/2^k (stride a power of two), got {scales}")
    levels = [int(round(lv)) for lv in levels]
    if levels != list(range(levels[0], levels[0] + len(levels))):
        raise ValueError(
            f"scales must be consecutive pyramid levels, finest first, got strides "
            f"{[2 ** lv for lv in levels]}"
        )
    return levels[0], levels[-1]


def route_boxes(boxes: torch.Tensor, scales: Sequence[float], canonical_box_size: float,
                canonical_level: int) -> torch.Tensor:
    """(N,) int64 level of each box (index into ``scales``) for a pooler over ``scales``.

    Routed in float32 whatever the boxes' dtype: Detectron2's ``Boxes`` are float32, so its
    rule always sees float32 coordinates (and a box on a level boundary must agree).
    """
    if len(scales) == 1:
        return torch.zeros_like(boxes[:, 0], dtype=torch.int64)
    return assign_boxes_to_levels(boxes.float(), *pyramid_levels(scales), canonical_box_size, canonical_level)
