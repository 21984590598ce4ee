"""Float64 reference of Detectron2's ROIAlignRotated, written line by line from its CPU kernel.

Detectron2's ``ROIAlignRotated`` exists only in its compiled ``_C``
(detectron2/layers/csrc/ROIAlignRotated/ROIAlignRotated_cpu.cpp), which a pure-Python install
lacks, so the tests compare against this transcription instead. It follows
``ROIAlignRotatedForward`` + ``pre_calc_for_bilinear_interpolate`` with ``T = double``:

* ROI ``(batch_index, x_ctr, y_ctr, w, h, angle_degrees)``; centre scaled by ``spatial_scale``
  and shifted by -0.5 (always aligned, no "legacy offset"), size scaled, ``theta = angle*pi/180``;
* bin (ph, pw) has ``grid_h x grid_w`` samples (``sampling_ratio``, or ``ceil(roi_h / pooled_h)``
  and ``ceil(roi_w / pooled_w)`` when it is <= 0) at ``yy = -h/2 + ph*bin_h + (iy+.5)*bin_h/grid_h``
  (``xx`` alike), rotated counter-clockwise about the centre:
  ``y = yy*cos - xx*sin + cy``, ``x = yy*sin + xx*cos + cx``;
* bilinear interpolation with the kernel's border rule (a sample with ``y < -1 or y > H`` (``x``
  alike) contributes 0; otherwise negative coordinates clamp to 0 and those at or past the last
  row/column use that row/column); the bin is the sum divided by ``max(grid_h*grid_w, 1)``.

Per ROI, the kernel's scalar code runs in float64 numpy over arrays indexed like its loops
(ph, pw, iy, ix): the same formulas in the same order, elementwise. This gives, for every output
bin, its (pixel, weight) taps; the output is one ``index_add`` of the weighted pixels, so autograd
gives the gradient with respect to the input (the kernel's backward scatters the same weights).
For tests only.
"""
import math

import numpy as np
import torch
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = ["roi_align_rotated_reference", "ReferenceROIAlignRotated", "reference_level_pooler"]


def _bilinear_taps(height, width, y, x):
    """pre_calc_for_bilinear_interpolate, elementwise over arrays of sample coordinates.

    Returns (pos, weight), each (..., 4): the four taps of every sample (weights 0 for a
    sample outside ``[-1, H] x [-1, W]``)."""
    empty = (y < -1.0) | (y > height) | (x < -1.0) | (x > width)
    y = np.where(y < 0, 0.0, y)
    x = np.where(x < 0, 0.0, x)
    y_low, x_low = y.astype(np.int64), x.astype(np.int64)  # (int)y: y >= 0 here
    y_last, x_last = y_low >= height - 1, x_low >= width - 1
    y_low = np.where(y_last, height - 1, y_low)
    y_high = np.where(y_last, height - 1, y_low + 1)
    y = np.where(y_last, y_low.astype(np.float64), y)
    x_low = np.where(x_last, width - 1, x_low)
    x_high = np.where(x_last, width - 1, x_low + 1)
    x = np.where(x_last, x_low.astype(np.float64), x)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    pos = np.stack([y_low * width + x_low, y_low * width + x_high,
                    y_high * width + x_low, y_high * width + x_high], -1)
    weight = np.stack([hy * hx, hy * lx, ly * hx, ly * lx], -1)
    return np.where(empty[..., None], 0, pos), np.where(empty[..., None], 0.0, weight)


def roi_align_rotated_reference(input, rois, output_size, spatial_scale, sampling_ratio):
    """Detectron2's ``roi_align_rotated(input, rois, output_size, spatial_scale, sampling_ratio)``
    in float64.

    Args:
        input: (N, C, H, W) feature map (any float dtype; computed in float64).
        rois: (R, 6) ``batch_index, x_ctr, y_ctr, w, h, angle_degrees`` in input-image pixels.
        output_size: int or (pooled_h, pooled_w).
    Returns:
        (R, C, pooled_h, pooled_w) float64, differentiable with respect to ``input``.
    """
    pooled_h, pooled_w = _pair(output_size)
    x = input.to(torch.float64)
    N, C, H, W = x.shape
    out_index, batch_index, pixel, weight = [], [], [], []
    for n, roi in enumerate(rois.detach().to(torch.float64).tolist()):
        roi_batch_ind = int(roi[0])
        roi_center_w = roi[1] * spatial_scale - 0.5
        roi_center_h = roi[2] * spatial_scale - 0.5
        roi_width = roi[3] * spatial_scale
        roi_height = roi[4] * spatial_scale
        theta = roi[5] * math.pi / 180.0
        cos_theta, sin_theta = math.cos(theta), math.sin(theta)
        if not (roi_width >= 0 and roi_height >= 0):
            raise ValueError("ROIs in ROIAlignRotated do not have non-negative size!")
        bin_size_h = roi_height / pooled_h
        bin_size_w = roi_width / pooled_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_height / pooled_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_width / pooled_w)
        count = max(grid_h * grid_w, 1)
        roi_start_h, roi_start_w = -roi_height / 2.0, -roi_width / 2.0
        # the kernel's loops "for ph, for pw, for iy, for ix" as array axes (ph, pw, iy, ix)
        ph, pw, iy, ix = np.meshgrid(np.arange(pooled_h), np.arange(pooled_w), np.arange(grid_h),
                                     np.arange(grid_w), indexing="ij")
        yy = roi_start_h + ph * bin_size_h + (iy + 0.5) * bin_size_h / grid_h
        xx = roi_start_w + pw * bin_size_w + (ix + 0.5) * bin_size_w / grid_w
        y = yy * cos_theta - xx * sin_theta + roi_center_h
        xs = yy * sin_theta + xx * cos_theta + roi_center_w
        pos, w = _bilinear_taps(H, W, y, xs)  # (ph, pw, iy, ix, 4)
        bins = (n * pooled_h + ph) * pooled_w + pw
        out_index.append(np.broadcast_to(bins[..., None], pos.shape).ravel())
        batch_index.append(np.full(pos.size, roi_batch_ind))
        pixel.append(pos.ravel())
        weight.append((w / count).ravel())
    R = rois.shape[0]
    out = x.new_zeros(R * pooled_h * pooled_w, C)
    if out_index:
        cat = lambda parts: torch.from_numpy(np.concatenate(parts))  # noqa: E731
        taps = x.reshape(N, C, H * W)[cat(batch_index), :, cat(pixel)]  # (S, C)
        out = out.index_add(0, cat(out_index), taps * cat(weight)[:, None])
    return out.view(R, pooled_h, pooled_w, C).permute(0, 3, 1, 2).contiguous()


class ReferenceROIAlignRotated(nn.Module):
    """Same constructor and call as ``detectron2.layers.ROIAlignRotated``, float64 output."""

    def __init__(self, output_size, spatial_scale, sampling_ratio):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio

    def forward(self, input, rois):
        assert rois.dim() == 2 and rois.size(1) == 6
        return roi_align_rotated_reference(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio
        )


class _CastBack(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, x, rois):
        return self.op(x, rois).to(x.dtype)


def reference_level_pooler(d2_module):
    """The reference with the settings of a ``detectron2.layers.ROIAlignRotated`` module, output
    cast to the features' dtype: a stand-in for one level of Detectron2's ``ROIPooler`` in tests."""
    return _CastBack(
        ReferenceROIAlignRotated(d2_module.output_size, d2_module.spatial_scale, d2_module.sampling_ratio)
    )
