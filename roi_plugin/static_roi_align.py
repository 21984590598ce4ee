# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Multi-level ROIAlign with static shapes, exact at every sampling ratio: the pooler's
deployment path (trace, ONNX, TorchScript, ``torch.export``, ``torch.compile``).

Each level runs ``torchvision.ops.roi_align`` (the kernel the eager samplers reproduce sample for
sample; ONNX ``RoiAlign`` from opset 16, whose onnxruntime kernel equals torchvision's, see
``tests/test_export.py``) on *all* K ROIs, with the boxes of ROIs routed to other levels
replaced by an empty box at the origin, and ``where`` on the level keeps each ROI's own level.
An empty box costs one sample per bin at any sampling ratio (torchvision's adaptive grid is
``ceil(0 / h) = 0`` -> no sample, legacy mode clamps it to 1 px -> one), so the extra work is
``(L - 1) * K * h * w`` samples. No ``nonzero``, no data-dependent shape, no Python branch on
data: the number of ROIs and images are dynamic, and adaptive sampling stays adaptive inside
``RoiAlign`` (no ``max_grid`` cap). Scriptable.
"""
from typing import List

import torch
import torchvision

__all__ = ["roi_align_levels"]


def roi_align_levels(
    x: List[torch.Tensor],
    rois: torch.Tensor,
    level_of: torch.Tensor,
    output_size: List[int],
    scales: List[float],
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """
    Args:
        x: L maps (B, C, H_l, W_l), finest first, matching ``scales``.
        rois: (K, 5) ``batch_index, x1, y1, x2, y2`` in input-image pixels.
        level_of: (K,) int64 level of each ROI (0 for ``x[0]``), e.g. from
            :func:`roi_plugin.pooler.assign_boxes_to_levels`.
        output_size: (h, w). scales: 1/stride of each level.
        sampling_ratio: samples per bin and axis, 0 = adaptive.
        aligned: ``ROIAlignV2`` (half-pixel shift) if True, legacy ``ROIAlign`` otherwise.
    Returns:
        (K, C, h, w) in the maps' dtype (sampled in float32, float64 for float64 maps).
    """
    dtype = x[0].dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    rois = rois.to(compute)
    out = torch.zeros(0)
    for level in range(len(x)):
        here = (level_of == level)[:, None]
        level_rois = torch.cat([rois[:, :1], torch.where(here, rois[:, 1:], torch.zeros_like(rois[:, 1:]))], 1)
        pooled = torchvision.ops.roi_align(
            x[level].to(compute), level_rois, output_size, scales[level], sampling_ratio, aligned
        )
        out = pooled if level == 0 else torch.where(here[:, :, None, None], pooled, out)
    return out.to(dtype)
