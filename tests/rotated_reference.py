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

The loops run in Python floats (double) and produce, for every output bin, its list of
(pixel, weight) taps; the output is then one ``index_add`` of the weighted pixels, so autograd
gives the gradient with respect to the input (the kernel's backward scatters the same weights).
Slow by design; for small tests only.
"""
import math

import torch
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = ["roi_align_rotated_reference", "ReferenceROIAlignRotated"]


def _bilinear_taps(height, width, y, x):
    """pre_calc_for_bilinear_interpolate for one sample: [(pos, weight)] * 4 (weights 0 outside)."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return [(0, 0.0)] * 4
    if y < 0:
        y = 0.0
    if x < 0:
        x = 0.0
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return [
        (y_low * width + x_low, hy * hx),
        (y_low * width + x_high, hy * lx),
        (y_high * width + x_low, ly * hx),
        (y_high * width + x_high, ly * lx),
    ]


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
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                bin_index = (n * pooled_h + ph) * pooled_w + pw
                for iy in range(grid_h):
                    yy = roi_start_h + ph * bin_size_h + (iy + 0.5) * bin_size_h / grid_h
                    for ix in range(grid_w):
                        xx = roi_start_w + pw * bin_size_w + (ix + 0.5) * bin_size_w / grid_w
                        y = yy * cos_theta - xx * sin_theta + roi_center_h
                        xs = yy * sin_theta + xx * cos_theta + roi_center_w
                        for pos, w in _bilinear_taps(H, W, y, xs):
                            out_index.append(bin_index)
                            batch_index.append(roi_batch_ind)
                            pixel.append(pos)
                            weight.append(w / count)
    R = rois.shape[0]
    out = x.new_zeros(R * pooled_h * pooled_w, C)
    if out_index:
        taps = x.reshape(N, C, H * W)[torch.tensor(batch_index), :, torch.tensor(pixel)]  # (S, C)
        taps = taps * torch.tensor(weight, dtype=torch.float64)[:, None]
        out = out.index_add(0, torch.tensor(out_index), taps)
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
        return roi_align_rotated_reference(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)
