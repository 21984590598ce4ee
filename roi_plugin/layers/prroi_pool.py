# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Precise ROI pooling (PrRoIPool; Jiang et al., ECCV 2018, "Acquisition of Localization
Confidence for Accurate Object Detection"): the exact integral of the bilinearly interpolated
map over each bin, divided by the bin's area; continuous in the box, with a gradient with
respect to the box coordinates as well as the features.

Convention, that of the authors' kernel and mmcv's ``PrRoIPool``: a box edge at input pixel
``x`` lies at ``X = x * scale`` in the level's pixel coordinates (no half-pixel shift); the map
is the bilinear surface through its values at integer coordinates, zero beyond the map,

    f(x, y) = sum_{i, j} f[i, j] tri(y - i) tri(x - j),        tri(t) = max(0, 1 - |t|),

and bin ``(p, q)`` of a ``Ph x Pw`` ROI is ``[a, b] x [c, d]`` with ``a = X1 + q (X2 - X1) / Pw``,
``b = a + (X2 - X1) / Pw`` (and ``c, d`` along y), ``X2 - X1`` taken as ``max(X2 - X1, 0)``:

    out = (1 / ((b - a)(d - c))) * integral_c^d integral_a^b f(x, y) dx dy
        = sum_{i, j} f[i, j] wy_i wx_j,    wx_j = (1 / (b - a)) integral_a^b tri(x - j) dx,

0 for an empty bin (zero area). The integral is separable: a bin is a weighted sum of the
map's values at the pixels ``floor(a) .. ceil(b)`` by ``floor(c) .. ceil(d)``, the same bags of
taps as ROIAlign's (:func:`.gather_plan.upright_gather_plan` with the PrRoIPool rule
:func:`prroi_axis_rule`, summed by :mod:`.gather`). Each ``wx_j`` is computed as the two
trapezoids of ``tri(x - j)`` over ``[a, b]`` (exact for a linear piece, and no cancellation
for small bins).

Gradients. With respect to the features, the transpose of the same sums
(:func:`.gather.gather_backward`). With respect to a bin's right edge ``b``,

    d out / d b = (E_b - out) / (b - a),    E_b = sum_{i, j} f[i, j] wy_i tri(b - j),

``E_b`` the mean of the surface along that edge (the same plan with the x-taps of the point
``b``); the left edge ``a`` gives ``(out - E_a) / (b - a)``, and the y edges alike. The edges
move with the box (``a = X1 (1 - q / Pw) + X2 q / Pw``, ...) and ``X = x * scale``, which gives
the gradient of the (K, 5) rois (0 for the image index and for empty bins), mmcv's
``prroi_pool_coor_backward`` formula. Operators: ``roi_plugin::prroi_pool[_backward]``
(:mod:`.roi_align_ops`).
"""
from typing import List, Sequence, Tuple

import torch

from .axis_taps import AxisTaps
from .gather import gather_backward, gather_forward
from .gather_plan import plan_budget, upright_gather_plan

__all__ = ["prroi_axis_rule", "prroi_pool_forward", "prroi_pool_backward"]


def _edges(lo: torch.Tensor, hi: torch.Tensor, pooled: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(n, P) bin edges ``a, b`` of ROIs ``[lo, hi]`` (n,) (level coordinates), mmcv's arithmetic."""
    bin_size = (hi - lo).clamp(min=0) / pooled
    a = lo[:, None] + bin_size[:, None] * torch.arange(pooled, device=lo.device, dtype=lo.dtype)
    return a, a + bin_size[:, None]


def _flat_taps(first: torch.Tensor, last: torch.Tensor, size: torch.Tensor):
    """Pixels ``first .. last`` (inclusive, (n, P) int64) clipped to ``[0, size)`` as flat lists:
    (pixel (S,), bin (S,), counts (n*P,))."""
    first = first.clamp(min=0)
    last = torch.minimum(last, size[:, None] - 1)
    count = (last - first + 1).clamp(min=0).flatten()
    total = int(count.sum())
    bin_of = torch.repeat_interleave(torch.arange(count.numel(), device=first.device), count)
    pixel = first.flatten()[bin_of] + torch.arange(total, device=first.device) - (torch.cumsum(count, 0) - count)[bin_of]
    return pixel, bin_of, count


def _integral_taps(a: torch.Tensor, b: torch.Tensor, size: torch.Tensor) -> AxisTaps:
    """``wx_j = (1/(b - a)) integral_a^b tri(x - j) dx`` for every bin ``[a, b]`` (n, P)."""
    pixel, bin_of, _ = _flat_taps(torch.floor(a).to(torch.int64), torch.ceil(b).to(torch.int64), size)
    lo, hi = a.flatten()[bin_of], b.flatten()[bin_of]
    j = pixel.to(a.dtype)
    # the rising piece [j - 1, j] (tri = x - j + 1) and the falling piece [j, j + 1] (tri = j + 1 - x)
    l1, h1 = torch.maximum(lo, j - 1), torch.minimum(hi, j)
    l2, h2 = torch.maximum(lo, j), torch.minimum(hi, j + 1)
    area = (h1 - l1).clamp(min=0) * ((l1 - j + 1) + (h1 - j + 1)) * 0.5 \
        + (h2 - l2).clamp(min=0) * ((j + 1 - l2) + (j + 1 - h2)) * 0.5
    width = hi - lo
    weight = torch.where(width > 0, area / torch.where(width > 0, width, torch.ones_like(width)), torch.zeros_like(area))
    return _compact(pixel, weight, bin_of, a.numel())


def _point_taps(x: torch.Tensor, size: torch.Tensor) -> AxisTaps:
    """The surface's two taps at the points ``x`` (n, P): ``tri(x - j)``, zero beyond the map."""
    f = torch.floor(x).to(torch.int64)
    pixel, bin_of, _ = _flat_taps(f, f + 1, size)
    weight = (1 - (x.flatten()[bin_of] - pixel.to(x.dtype)).abs()).clamp(min=0)
    return _compact(pixel, weight, bin_of, x.numel())


def _compact(pixel, weight, bin_of, bins: int) -> AxisTaps:
    keep = weight != 0
    count = torch.bincount(bin_of[keep], minlength=bins)
    return AxisTaps(pixel[keep], weight[keep], torch.cumsum(count, 0) - count, count)


def _level_edges(boxes: torch.Tensor, scale: torch.Tensor, output_size: Tuple[int, int]):
    b = boxes * scale[:, None]  # X = x * scale, no half-pixel shift
    ph, pw = output_size
    return _edges(b[:, 1], b[:, 3], ph), _edges(b[:, 0], b[:, 2], pw)


def prroi_axis_rule(output_size: Tuple[int, int], y_edge: str = "", x_edge: str = ""):
    """The PrRoIPool weights as :func:`.gather_plan.upright_gather_plan`'s ``axis_rule``; with
    ``y_edge`` / ``x_edge`` ``"a"`` or ``"b"`` that axis takes the point taps of the bins' first
    or second edge instead (the line integrals ``E`` of the box gradient)."""

    def rule(boxes: torch.Tensor, scale: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor):
        (ya, yb), (xa, xb) = _level_edges(boxes, scale, output_size)
        ys = _integral_taps(ya, yb, heights) if not y_edge else _point_taps(ya if y_edge == "a" else yb, heights)
        xs = _integral_taps(xa, xb, widths) if not x_edge else _point_taps(xa if x_edge == "a" else xb, widths)
        return ys, xs

    return rule


def _plan(features_or_sizes, boxes, batch, level_of, scales, output_size, y_edge="", x_edge="",
          backward=False):
    """The PrRoIPool plan, in blocks under the budget of :func:`.gather_plan.plan_budget` (as the
    ROIAlign operators': a share of what the call returns)."""
    bhw = [(s[0], s[2], s[3]) for s in features_or_sizes]
    return upright_gather_plan(bhw, boxes, batch, level_of, scales, output_size, 0, False,
                               plan_budget(boxes.shape[0], output_size, features_or_sizes, boxes.dtype.itemsize,
                                           backward),
                               axis_rule=prroi_axis_rule(output_size, y_edge, x_edge))


def prroi_pool_forward(features: List[torch.Tensor], boxes: torch.Tensor, batch: torch.Tensor,
                       level_of: torch.Tensor, scales: Sequence[float], output_size: Tuple[int, int],
                       compute_dtype: torch.dtype) -> torch.Tensor:
    """PrRoIPool of ``boxes`` (N, 4) in input pixels -> (N, C, Ph, Pw) in the maps' dtype."""
    if boxes.shape[0] == 0:
        return features[0].new_zeros((0, features[0].shape[1], *output_size))
    plan = _plan([f.shape for f in features], boxes, batch, level_of, scales, output_size)
    return gather_forward(plan, list(features), boxes.shape[0], output_size, compute_dtype)


def prroi_pool_backward(grad: torch.Tensor, features: List[torch.Tensor], boxes: torch.Tensor, batch: torch.Tensor,
                        level_of: torch.Tensor, scales: Sequence[float], output_size: Tuple[int, int],
                        compute_dtype: torch.dtype, box_grad: bool) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """(gradients of the maps, gradient of the (N, 5) rois (zeros unless ``box_grad``)) for ``grad``."""
    sizes = [tuple(f.shape) for f in features]
    num = boxes.shape[0]
    rois_grad = torch.zeros((num, 5), dtype=compute_dtype, device=grad.device)
    if num == 0:
        return [torch.zeros(s, dtype=features[0].dtype, device=grad.device) for s in sizes], rois_grad
    plan = _plan(sizes, boxes, batch, level_of, scales, output_size, backward=True)
    feature_grads = gather_backward(plan, grad, sizes, features[0].dtype, compute_dtype)
    if not box_grad:
        return feature_grads, rois_grad
    ph, pw = output_size
    g = grad.to(compute_dtype)
    out = gather_forward(plan, list(features), num, output_size, compute_dtype).to(compute_dtype)
    scale = torch.tensor(scales, dtype=compute_dtype, device=grad.device)[level_of]
    (ya, yb), (xa, xb) = _level_edges(boxes, scale, output_size)
    # d out / d edge, contracted with the gradient over channels: (N, Ph, Pw) per edge
    sums = {}
    for name, y_edge, x_edge in (("xa", "", "a"), ("xb", "", "b"), ("ya", "a", ""), ("yb", "b", "")):
        line = gather_forward(_plan(sizes, boxes, batch, level_of, scales, output_size, y_edge, x_edge),
                              list(features), num, output_size, compute_dtype).to(compute_dtype)
        sums[name] = (g * (line - out)).sum(1)
        del line
    width = (xb - xa)[:, None, :]  # (N, 1, Pw)
    height = (yb - ya)[:, :, None]  # (N, Ph, 1)
    live = (width > 0) & (height > 0)

    def safe(x, d):
        return torch.where(live, x / torch.where(live, d, torch.ones_like(d)), torch.zeros_like(x))

    d_xa, d_xb = -safe(sums["xa"], width), safe(sums["xb"], width)  # d L / d a, d L / d b per bin
    d_ya, d_yb = -safe(sums["ya"], height), safe(sums["yb"], height)
    # edges of bin q: a = X1 + q (X2 - X1) / P, b = X1 + (q + 1) (X2 - X1) / P
    q = torch.arange(pw, device=grad.device, dtype=compute_dtype)
    p = torch.arange(ph, device=grad.device, dtype=compute_dtype)
    dx1 = (d_xa * (1 - q / pw) + d_xb * (1 - (q + 1) / pw)).sum((1, 2))
    dx2 = (d_xa * (q / pw) + d_xb * ((q + 1) / pw)).sum((1, 2))
    dy1 = (d_ya * (1 - p / ph)[:, None] + d_yb * (1 - (p + 1) / ph)[:, None]).sum((1, 2))
    dy2 = (d_ya * (p / ph)[:, None] + d_yb * ((p + 1) / ph)[:, None]).sum((1, 2))
    # X = x * scale; X2 - X1 is clamped at 0 (an inverted box pools nothing: no gradient)
    rois_grad[:, 1:] = torch.stack([dx1, dy1, dx2, dy2], 1) * scale[:, None]
    return feature_grads, rois_grad
