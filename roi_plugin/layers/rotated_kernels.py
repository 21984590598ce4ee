# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The device path for rotated boxes: Detectron2's ``ROIAlignRotated`` and its deterministic transpose.

Forward, one program per (ROI ``r``, block of channels), all ``Ph x Pw`` bins at once, the samples
of :mod:`.rotated_geometry` (float64 coordinates, rotated about the box centre):

    out[r, c, py, px] = sum over the bin's samples s of  sum over its 4 taps t of  w_s,t * f[b, c, y_t, x_t]

Backward, one program per (level, image, ``TY x TX`` pixel tile, block of channels), the ROIs of
that level and image in ROI order. Rotated samples are not separable, so each bin's taps that
land in the tile are summed into a (TY*TX,) weight vector ``m`` and the tile gets the rank-one
update ``dout[r, :, py, px] (x) m``:

    df[c, t] = sum over ROIs r, bins (py, px)  dout[r, c, py, px] * m_r,py,px[t]

Every gradient value is written by one program in a fixed order: no atomics, bitwise
reproducible. The per-sample rules are those of the upright kernels (:mod:`.roi_align_kernels`:
``_taps`` is ``on_map`` + ``bilinear_taps``); the rotation is :mod:`.rotated_geometry`'s,
formula for formula.
"""
import triton
import triton.language as tl

from .roi_align_kernels import _add_tap, _backward_tile, _ct, _div, _pick, _taps

__all__ = ["roi_align_rotated_forward_kernel", "roi_align_rotated_backward_kernel"]


@triton.jit
def _rotated_box(rois_ptr, r, scale, POOLED_H: tl.constexpr, POOLED_W: tl.constexpr, RATIO: tl.constexpr):
    """ROI ``r`` of the (K, 6) ``batch_index, x_ctr, y_ctr, w, h, angle`` rows at a level of
    ``scale`` (``rotated_level_boxes``, ``samples_per_bin``), in float64: image, centre, bin
    sizes, samples per bin, cos and sin of the angle."""
    row = rois_ptr + r.to(tl.int64) * 6
    image = tl.load(row).to(tl.int64)
    s = scale.to(tl.float64)
    cx = tl.load(row + 1).to(tl.float64) * s - 0.5
    cy = tl.load(row + 2).to(tl.float64) * s - 0.5
    width = tl.load(row + 3).to(tl.float64) * s
    height = tl.load(row + 4).to(tl.float64) * s
    theta = tl.load(row + 5).to(tl.float64) * 0.017453292519943295  # math.pi / 180
    bin_h = height / POOLED_H
    bin_w = width / POOLED_W
    if RATIO > 0:
        gh = tl.zeros_like(height) + RATIO
        gw = tl.zeros_like(width) + RATIO
    else:
        gh = tl.maximum(tl.ceil(bin_h), 0.0)
        gw = tl.maximum(tl.ceil(bin_w), 0.0)
    return image, cx, cy, height, width, bin_h, bin_w, gh, gw, tl.cos(theta), tl.sin(theta)


@triton.jit
def _rotated_sample(cx, cy, height, width, bin_h, bin_w, gh, gw, cos, sin, py, px, iy, ix, H, W):
    """The (y, x) taps of sample ``(iy, ix)`` of bins ``(py, px)`` and whether a pixel reads it
    (``rotated_samples``: the kernel's association, then the rotation)."""
    yy = -(height / 2.0) + tl.cast(py, tl.float64) * bin_h + (tl.cast(iy, tl.float64) + 0.5) * bin_h / gh
    xx = -(width / 2.0) + tl.cast(px, tl.float64) * bin_w + (tl.cast(ix, tl.float64) + 0.5) * bin_w / gw
    y = yy * cos - xx * sin + cy
    x = yy * sin + xx * cos + cx
    yl, yh, fy, yok = _taps(y, H)
    xl, xh, fx, xok = _taps(x, W)
    return yl, yh, fy, xl, xh, fx, yok & xok


@triton.jit
def _inverse(g, F64: tl.constexpr):
    """``1 / g`` in the compute dtype, the mean's factor of ``bilinear_taps`` (1 where g = 0)."""
    g = _ct(tl.where(g > 0, g, 1.0), F64)
    return _div(tl.zeros_like(g) + 1.0, g, F64)


@triton.jit
def _weights(fy, fx, inv_gy, inv_gx, F64: tl.constexpr):
    """The four taps' weights (low-low, low-high, high-low, high-high) in the compute dtype."""
    fy = _ct(fy, F64)
    fx = _ct(fx, F64)
    wyl = (1.0 - fy) * inv_gy
    wyh = fy * inv_gy
    wxl = (1.0 - fx) * inv_gx
    wxh = fx * inv_gx
    return wyl * wxl, wyl * wxh, wyh * wxl, wyh * wxh


@triton.jit
def roi_align_rotated_forward_kernel(
    out_ptr, rois_ptr, level_ptr,
    f0, f1, f2, f3, f4,
    H0, W0, H1, W1, H2, W2, H3, W3, H4, W4,
    s0, s1, s2, s3, s4,
    C,
    PH: tl.constexpr, PW: tl.constexpr, PB: tl.constexpr, CB: tl.constexpr, RATIO: tl.constexpr,
    F64: tl.constexpr, NUM_LEVELS: tl.constexpr,
):
    """``out`` (K, C, PH, PW) from the levels ``f0..`` (B, C, H_l, W_l), contiguous. Grid:
    (K, cdiv(C, CB)); ``PB`` is ``PH * PW`` rounded up to a power of two."""
    r = tl.program_id(0)
    c0 = tl.program_id(1) * CB
    level = tl.load(level_ptr + r).to(tl.int32)
    feat = _pick(level, f0, f1, f2, f3, f4, NUM_LEVELS)
    H = _pick(level, H0, H1, H2, H3, H4, NUM_LEVELS)
    W = _pick(level, W0, W1, W2, W3, W4, NUM_LEVELS)
    scale = _pick(level, s0, s1, s2, s3, s4, NUM_LEVELS)
    image, cx, cy, height, width, bin_h, bin_w, gh, gw, cos, sin = _rotated_box(rois_ptr, r, scale, PH, PW, RATIO)
    inv_gy, inv_gx = _inverse(gh, F64), _inverse(gw, F64)
    bins = tl.arange(0, PB)
    in_out = bins < PH * PW
    py = bins // PW
    px = bins % PW
    ch = c0 + tl.arange(0, CB)
    cmask = ch < C
    plane = feat + (image * C + ch.to(tl.int64))[:, None] * (tl.cast(H, tl.int64) * W)
    acc = tl.zeros((CB, PB), dtype=inv_gy.dtype)
    for iy in range(0, gh.to(tl.int32)):
        for ix in range(0, gw.to(tl.int32)):
            yl, yh, fy, xl, xh, fx, ok = _rotated_sample(cx, cy, height, width, bin_h, bin_w, gh, gw, cos, sin,
                                                         py, px, iy, ix, H, W)
            ok = ok & in_out
            w00, w01, w10, w11 = _weights(fy, fx, inv_gy, inv_gx, F64)
            acc = _add_tap(acc, plane, yl * W + xl, w00, ok, cmask)
            acc = _add_tap(acc, plane, yl * W + xh, w01, ok, cmask)
            acc = _add_tap(acc, plane, yh * W + xl, w10, ok, cmask)
            acc = _add_tap(acc, plane, yh * W + xh, w11, ok, cmask)
    dst = out_ptr + (r.to(tl.int64) * C + ch.to(tl.int64))[:, None] * (PH * PW) + bins[None, :]
    tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=cmask[:, None] & in_out[None, :])


@triton.jit
def roi_align_rotated_backward_kernel(
    grad_ptr, rois_ptr, level_ptr, order_ptr, seg_ptr,
    d0, d1, d2, d3, d4,
    H0, W0, H1, W1, H2, W2, H3, W3, H4, W4,
    s0, s1, s2, s3, s4,
    P1, P2, P3, P4,
    C, B,
    PH: tl.constexpr, PW: tl.constexpr, CB: tl.constexpr, TY: tl.constexpr, TX: tl.constexpr,
    RATIO: tl.constexpr, F64: tl.constexpr, NUM_LEVELS: tl.constexpr,
):
    """The feature gradients ``d0..`` (B, C, H_l, W_l), contiguous, from ``grad`` (K, C, PH, PW),
    contiguous; ``order``, ``seg``, the grid and ``P1..`` as for the upright backward kernel."""
    c0 = tl.program_id(1) * CB
    dst, H, W, scale, image, y0, x0, j0, j1 = _backward_tile(
        seg_ptr, d0, d1, d2, d3, d4, H0, W0, H1, W1, H2, W2, H3, W3, H4, W4, s0, s1, s2, s3, s4,
        P1, P2, P3, P4, B, TY, TX, NUM_LEVELS)

    ch = c0 + tl.arange(0, CB)
    cmask = ch < C
    t = tl.arange(0, TY * TX)
    ys = y0 + t // TX
    xs = x0 + t % TX
    acc = tl.zeros((CB, TY * TX), dtype=tl.float64 if F64 else tl.float32)
    for j in range(j0, j1):
        r = tl.load(order_ptr + j)
        _, cx, cy, height, width, bin_h, bin_w, gh, gw, cos, sin = _rotated_box(rois_ptr, r, scale, PH, PW, RATIO)
        # The rotated box's upright extent, one pixel of margin for the taps: does it touch the tile?
        ey = tl.abs(width / 2.0 * sin) + tl.abs(height / 2.0 * cos) + 2.0
        ex = tl.abs(width / 2.0 * cos) + tl.abs(height / 2.0 * sin) + 2.0
        hit = ((cy + ey >= y0) & (cy - ey < y0 + TY) & (cx + ex >= x0) & (cx - ex < x0 + TX)
               & (gh > 0) & (gw > 0))
        if hit:
            inv_gy, inv_gx = _inverse(gh, F64), _inverse(gw, F64)
            base = grad_ptr + (r.to(tl.int64) * C + ch.to(tl.int64)) * (PH * PW)
            for b in range(0, PH * PW):
                py = b // PW
                px = b % PW
                m = tl.zeros((TY * TX,), dtype=acc.dtype)  # the tile's weights of this bin's taps
                for iy in range(0, gh.to(tl.int32)):
                    for ix in range(0, gw.to(tl.int32)):
                        yl, yh, fy, xl, xh, fx, ok = _rotated_sample(cx, cy, height, width, bin_h, bin_w, gh, gw,
                                                                     cos, sin, py, px, iy, ix, H, W)
                        w00, w01, w10, w11 = _weights(fy, fx, inv_gy, inv_gx, F64)
                        m += tl.where((ys == yl) & (xs == xl), tl.where(ok, w00, 0.0), 0.0)
                        m += tl.where((ys == yl) & (xs == xh), tl.where(ok, w01, 0.0), 0.0)
                        m += tl.where((ys == yh) & (xs == xl), tl.where(ok, w10, 0.0), 0.0)
                        m += tl.where((ys == yh) & (xs == xh), tl.where(ok, w11, 0.0), 0.0)
                g = tl.load(base + b, mask=cmask, other=0.0).to(acc.dtype)  # (CB,)
                acc += g[:, None] * m[None, :]
    plane = dst + (image * C + ch.to(tl.int64))[:, None] * (tl.cast(H, tl.int64) * W)
    tl.store(plane + (ys * W + xs)[None, :], acc.to(dst.dtype.element_ty),
             mask=cmask[:, None] & ((ys < H) & (xs < W))[None, :])
