# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The device path's two Triton kernels: upright ROIAlign and its deterministic transpose.

Forward, one program per (ROI ``r``, block of channels), all ``Ph x Pw`` bins at once:

    out[r, c, py, px] = sum over the bin's samples s of  sum over its 4 taps t of  w_s,t * f[b, c, y_t, x_t]

Backward, one program per (level, image, ``TY x TX`` pixel tile, block of channels). Upright
samples are separable (:mod:`.geometry`), so the gradient of a tile is

    df[c, y, x] = sum over the ROIs r of this level and image, in ROI order,
                  sum_py  Wy_r[py, y] * ( sum_px  Wx_r[px, x] * dout[r, c, py, px] )

where ``Wy_r[py, y]`` sums the y-tap weights of bin row ``py``'s samples that land on pixel row
``y`` (``Wx_r`` the same along x). Every gradient value is written by exactly one program and
summed in a fixed order: no atomics, so the backward is bitwise reproducible run to run, with
or without ``torch.use_deterministic_algorithms(True)``. Levels and images without ROIs get
zeros from the same programs (the gradient needs no zero-fill first).

Geometry. The kernels compute each ROI's geometry from its box and level, with the rules of
:mod:`.geometry` in the same arithmetic (same dtype, same association, IEEE division, no fused
multiply-add: the launcher passes ``enable_fp_fusion=False``), so they place every sample
where the CPU path does:

====================================  ===========================================
:mod:`.geometry`                      here
====================================  ===========================================
``level_boxes``, ``samples_per_bin``  :func:`_axis` (start, extent, bin, ``g``)
``needs_float64``                     :func:`_axis` (``far``: coordinates in float64)
``first_sample_on_map``               :func:`_window` (the samples worth visiting)
``sample_coordinates``                :func:`_coord`
``on_map``, ``bilinear_taps``         :func:`_taps`
====================================  ===========================================

tests/test_device_path.py holds the two paths equal (outputs and gradients, adversarial
boxes included), running these kernels in Triton's interpreter on the CPU; it also compiles
them for an sm_90 GPU, so a kernel that would not build fails CI without a GPU. The launcher
is :mod:`.device_path`.
"""
import triton
import triton.language as tl

__all__ = ["roi_align_forward_kernel", "roi_align_backward_kernel"]


@triton.jit
def _div(a, b, F64: tl.constexpr):
    """``a / b`` rounded to nearest (Triton's float32 ``/`` is an approximation on NVIDIA GPUs)."""
    if F64:
        return a / b
    else:
        return tl.math.div_rn(a, b)


@triton.jit
def _nonzero(g):
    """``g``, or 1 where it is 0: divisors of ROIs without samples, whose quotients go unused."""
    return tl.where(g > 0, g, 1.0)


@triton.jit
def _ct(x, F64: tl.constexpr):
    """``x`` in the compute dtype (:func:`.geometry.compute_dtype`)."""
    if F64:
        return tl.cast(x, tl.float64)
    else:
        return tl.cast(x, tl.float32)


@triton.jit
def _pick(level, v0, v1, v2, v3, v4, NUM_LEVELS: tl.constexpr):
    """The value of ``level`` among the per-level arguments ``v0..v4``."""
    v = v0
    if NUM_LEVELS > 1:
        v = tl.where(level == 1, v1, v)
    if NUM_LEVELS > 2:
        v = tl.where(level == 2, v2, v)
    if NUM_LEVELS > 3:
        v = tl.where(level == 3, v3, v)
    if NUM_LEVELS > 4:
        v = tl.where(level == 4, v4, v)
    return v



@triton.jit
def _backward_tile(seg_ptr, d0, d1, d2, d3, d4, H0, W0, H1, W1, H2, W2, H3, W3, H4, W4, s0, s1, s2, s3, s4,
                   P1, P2, P3, P4, B, TY: tl.constexpr, TX: tl.constexpr, NUM_LEVELS: tl.constexpr):
    """What a backward program (axis 0 of the grid) owns: its level's gradient ``dst``, that map's
    ``H``, ``W`` and ``scale``, its ``image``, its pixel tile's corner ``y0``, ``x0``, and the
    range ``j0..j1`` of ``order`` holding the ROIs of its level and image. The programs of level ``l`` (``B`` images
    times its tiles, row-major) start at ``P_l`` (``P0 = 0``); the upright and rotated backward
    kernels share this layout."""
    pid = tl.program_id(0)
    level = pid * 0
    if NUM_LEVELS > 1:
        level += (pid >= P1).to(tl.int32)
    if NUM_LEVELS > 2:
        level += (pid >= P2).to(tl.int32)
    if NUM_LEVELS > 3:
        level += (pid >= P3).to(tl.int32)
    if NUM_LEVELS > 4:
        level += (pid >= P4).to(tl.int32)
    dst = _pick(level, d0, d1, d2, d3, d4, NUM_LEVELS)
    H = _pick(level, H0, H1, H2, H3, H4, NUM_LEVELS)
    W = _pick(level, W0, W1, W2, W3, W4, NUM_LEVELS)
    scale = _pick(level, s0, s1, s2, s3, s4, NUM_LEVELS)
    first = _pick(level, 0, P1, P2, P3, P4, NUM_LEVELS)
    tiles_x = (W + TX - 1) // TX
    tiles = ((H + TY - 1) // TY) * tiles_x
    image = (pid - first) // tiles
    tile = (pid - first) % tiles
    y0 = (tile // tiles_x) * TY
    x0 = (tile % tiles_x) * TX
    j0 = tl.load(seg_ptr + level * B + image)
    j1 = tl.load(seg_ptr + level * B + image + 1)
    return dst, H, W, scale, image, y0, x0, j0, j1

@triton.jit
def _axis(lo, hi, scale, POOLED: tl.constexpr, RATIO: tl.constexpr, ALIGNED: tl.constexpr, F64: tl.constexpr):
    """One axis of a box ``lo..hi`` (input pixels) on a level of ``scale``: its start and extent
    in level pixel-centre coordinates, bin size, samples per bin ``g`` (a float) and whether its
    coordinates are computed in float64 (``level_boxes``, ``samples_per_bin``, ``needs_float64``)."""
    start = lo * scale
    end = hi * scale
    if ALIGNED:
        start = start - 0.5
        end = end - 0.5
    extent = end - start
    if not ALIGNED:  # legacy ROIAlign: malformed ROIs are forced to 1 pixel
        extent = tl.maximum(extent, 1.0)
    bin_size = _div(extent, tl.zeros_like(extent) + POOLED, F64)
    if RATIO > 0:
        g = tl.zeros_like(extent) + RATIO
    else:
        g = tl.maximum(tl.ceil(bin_size), 0.0)
    spacing = _div(bin_size, _nonzero(g), F64)  # an ROI without samples (g = 0) is never far
    far = ((tl.abs(start) + tl.abs(extent)).to(tl.float64) * 1.1920928955078125e-07
           / tl.where(spacing > 0, spacing, 1.0).to(tl.float64) > 0.25) & (spacing > 0) & (g > 0)
    return start, extent, bin_size, g, far


@triton.jit
def _window(start, bin_size, g, p, lo_edge, hi_edge, F64: tl.constexpr):
    """Samples ``k`` of bin ``p`` (scalar or tensor) that may lie in ``[lo_edge, hi_edge]``: the
    first and how many, one sample of margin either side for rounding (``first_sample_on_map``);
    callers check each sample exactly."""
    base = start.to(tl.float64) + tl.cast(p, tl.float64) * bin_size.to(tl.float64)
    spacing = _div(bin_size, _nonzero(g), F64).to(tl.float64)
    moving = (spacing > 0) & (g > 0)
    step = tl.where(moving, spacing, 1.0)
    g64 = g.to(tl.float64)
    lo = tl.where(moving, tl.floor((lo_edge - base) / step - 0.5) - 1.0, 0.0)
    hi = tl.where(moving, tl.floor((hi_edge - base) / step - 0.5) + 1.0, g64 - 1.0)
    lo = tl.minimum(tl.maximum(lo, 0.0), g64)
    hi = tl.maximum(tl.minimum(hi, g64 - 1.0), -1.0)
    return lo.to(tl.int32), tl.maximum(hi - lo + 1.0, 0.0).to(tl.int32)


@triton.jit
def _coord(start, bin_size, p, k, g, far, F64: tl.constexpr):
    """Coordinate (float64) of sample ``k`` of bin ``p``: ``start + p * bin + (k + 0.5) * bin / g``
    in the compute dtype, or in float64 for a ``far`` ROI (``sample_coordinates``)."""
    i = _ct(k, F64) + 0.5
    c = (start + _ct(p, F64) * bin_size + _div(i * bin_size, g, F64)).to(tl.float64)
    if far:
        s64 = start.to(tl.float64)
        b64 = bin_size.to(tl.float64)
        c = s64 + tl.cast(p, tl.float64) * b64 + (tl.cast(k, tl.float64) + 0.5) * b64 / g.to(tl.float64)
    return c


@triton.jit
def _taps(c, size):
    """The two linear-interpolation taps of coordinates ``c`` along an axis of ``size`` pixels:
    ``low``, ``high``, the weight ``frac`` of ``high``, and whether a pixel reads the sample
    (``on_map``: ``-1 <= c <= size``; ``bilinear_taps``: clamp to >= 0, the last pixel's rule)."""
    valid = (c >= -1.0) & (c <= size)
    cc = tl.minimum(tl.maximum(c, 0.0), size)  # the upper bound only tames invalid samples
    low = tl.floor(cc).to(tl.int32)
    last = size - 1
    edge = low >= last
    low = tl.maximum(tl.where(edge, last, low), 0)
    high = tl.minimum(tl.where(edge, low, low + 1), tl.maximum(last, 0))
    frac = tl.where(edge, 0.0, cc - low.to(tl.float64))
    return low, high, frac, valid


@triton.jit
def _box(rois_ptr, r, level_ptr, F64: tl.constexpr):
    """Image, level and corners of ROI ``r`` of the (K, 5) ``batch_index, x1, y1, x2, y2`` rows."""
    row = rois_ptr + r.to(tl.int64) * 5
    image = tl.load(row).to(tl.int64)
    level = tl.load(level_ptr + r).to(tl.int32)
    x1 = _ct(tl.load(row + 1), F64)
    y1 = _ct(tl.load(row + 2), F64)
    x2 = _ct(tl.load(row + 3), F64)
    y2 = _ct(tl.load(row + 4), F64)
    return image, level, x1, y1, x2, y2


@triton.jit
def _add_tap(acc, plane, pixel, w, ok, cmask):
    """``acc + w * f[pixel]`` for the (CB, PB) block; a tap of weight 0 reads nothing (as the CPU
    plan, which drops it: a non-finite value there does not reach the bin)."""
    m = cmask[:, None] & (ok & (w != 0))[None, :]
    f = tl.load(plane + pixel[None, :], mask=m, other=0.0).to(acc.dtype)
    return acc + tl.where(m, w[None, :] * f, 0.0)


@triton.jit
def roi_align_forward_kernel(
    out_ptr, rois_ptr, level_ptr,
    f0, f1, f2, f3, f4,
    H0, W0, H1, W1, H2, W2, H3, W3, H4, W4,
    s0, s1, s2, s3, s4,
    C,
    PH: tl.constexpr, PW: tl.constexpr, PB: tl.constexpr, CB: tl.constexpr, RATIO: tl.constexpr,
    ALIGNED: tl.constexpr, F64: tl.constexpr, NUM_LEVELS: tl.constexpr,
):
    """``out`` (K, C, PH, PW) from the levels ``f0..`` (B, C, H_l, W_l), contiguous. Grid:
    (K, cdiv(C, CB)); ``PB`` is ``PH * PW`` rounded up to a power of two."""
    r = tl.program_id(0)
    c0 = tl.program_id(1) * CB
    image, level, x1, y1, x2, y2 = _box(rois_ptr, r, level_ptr, F64)
    feat = _pick(level, f0, f1, f2, f3, f4, NUM_LEVELS)
    H = _pick(level, H0, H1, H2, H3, H4, NUM_LEVELS)
    W = _pick(level, W0, W1, W2, W3, W4, NUM_LEVELS)
    scale = _pick(level, s0, s1, s2, s3, s4, NUM_LEVELS)
    sy, ey, by, gy, fary = _axis(y1, y2, scale, PH, RATIO, ALIGNED, F64)
    sx, ex, bx, gx, farx = _axis(x1, x2, scale, PW, RATIO, ALIGNED, F64)
    inv_gy = _div(tl.zeros_like(gy) + 1.0, _nonzero(gy), F64)
    inv_gx = _div(tl.zeros_like(gx) + 1.0, _nonzero(gx), F64)

    bins = tl.arange(0, PB)
    in_out = bins < PH * PW
    py = bins // PW
    px = bins % PW
    # The samples some pixel reads, per bin: [lo, lo + count).
    lo_y, count_y = _window(sy, by, gy, py, -1.0, H, F64)
    lo_x, count_x = _window(sx, bx, gx, px, -1.0, W, F64)
    count_y = tl.where(in_out, count_y, 0)
    count_x = tl.where(in_out, count_x, 0)
    ny = tl.max(count_y, 0)
    nx = tl.max(count_x, 0)

    ch = c0 + tl.arange(0, CB)
    cmask = ch < C
    plane = feat + (image * C + ch.to(tl.int64))[:, None] * (tl.cast(H, tl.int64) * W)  # (CB, 1)
    acc = tl.zeros((CB, PB), dtype=gy.dtype)
    for ty in range(0, ny):
        ky = lo_y + ty
        yl, yh, fy, yok = _taps(_coord(sy, by, py, ky, gy, fary, F64), H)
        yok = yok & (ty < count_y) & (ky.to(tl.float64) < gy.to(tl.float64))
        fy = _ct(fy, F64)
        wyl = (1.0 - fy) * inv_gy
        wyh = fy * inv_gy
        for tx in range(0, nx):
            kx = lo_x + tx
            xl, xh, fx, xok = _taps(_coord(sx, bx, px, kx, gx, farx, F64), W)
            ok = yok & xok & (tx < count_x) & (kx.to(tl.float64) < gx.to(tl.float64))
            fx = _ct(fx, F64)
            wxl = (1.0 - fx) * inv_gx
            wxh = fx * inv_gx
            # The four taps, in the CPU plan's order.
            acc = _add_tap(acc, plane, yl * W + xl, wyl * wxl, ok, cmask)
            acc = _add_tap(acc, plane, yl * W + xh, wyl * wxh, ok, cmask)
            acc = _add_tap(acc, plane, yh * W + xl, wyh * wxl, ok, cmask)
            acc = _add_tap(acc, plane, yh * W + xh, wyh * wxh, ok, cmask)
    dst = out_ptr + (r.to(tl.int64) * C + ch.to(tl.int64))[:, None] * (PH * PW) + bins[None, :]
    tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=cmask[:, None] & in_out[None, :])


@triton.jit
def _axis_weights(start, bin_size, g, p, far, t0, T: tl.constexpr, size, F64: tl.constexpr):
    """(T,) weights of bin ``p``'s samples on the pixels ``t0 .. t0 + T - 1`` of one axis: the
    row of ``Wy`` (or ``Wx``) of the module docstring over a tile."""
    pixels = t0 + tl.arange(0, T)
    inv_g = _div(tl.zeros_like(g) + 1.0, _nonzero(g), F64)
    lo, n = _window(start, bin_size, g, p, tl.maximum(t0 - 1.0, -1.0), tl.minimum(t0 + T, size), F64)
    w = tl.zeros((T,), dtype=g.dtype)
    for t in range(0, n):
        k = lo + t
        low, high, frac, ok = _taps(_coord(start, bin_size, p, k, g, far, F64), size)
        ok = ok & (k.to(tl.float64) < g.to(tl.float64))
        frac = _ct(frac, F64)
        wl = tl.where(ok, (1.0 - frac) * inv_g, 0.0)
        wh = tl.where(ok, frac * inv_g, 0.0)
        w += tl.where(pixels == low, wl, 0.0) + tl.where(pixels == high, wh, 0.0)
    return w, n


@triton.jit
def roi_align_backward_kernel(
    grad_ptr, rois_ptr, level_ptr, order_ptr, seg_ptr,
    d0, d1, d2, d3, d4,
    H0, W0, H1, W1, H2, W2, H3, W3, H4, W4,
    s0, s1, s2, s3, s4,
    P1, P2, P3, P4,
    C, B,
    PH: tl.constexpr, PW: tl.constexpr, PWP: tl.constexpr, CB: tl.constexpr, TY: tl.constexpr,
    TX: tl.constexpr, RATIO: tl.constexpr, ALIGNED: tl.constexpr, F64: tl.constexpr,
    NUM_LEVELS: tl.constexpr,
):
    """The feature gradients ``d0..`` (B, C, H_l, W_l), contiguous, from ``grad`` (K, C, PH, PW),
    contiguous. ``order`` lists the ROIs by (level, image), stably; ROIs ``order[seg[l*B+b] :
    seg[l*B+b+1]]`` are those of level ``l`` and image ``b``. Grid: (programs, cdiv(C, CB)),
    the programs of level ``l`` (``B`` images times its tiles) starting at ``P_l`` (``P0 = 0``)."""
    c0 = tl.program_id(1) * CB
    dst, H, W, scale, image, y0, x0, j0, j1 = _backward_tile(
        seg_ptr, d0, d1, d2, d3, d4, H0, W0, H1, W1, H2, W2, H3, W3, H4, W4, s0, s1, s2, s3, s4,
        P1, P2, P3, P4, B, TY, TX, NUM_LEVELS)

    ch = c0 + tl.arange(0, CB)
    cmask = ch < C
    cols = tl.arange(0, PWP)
    acc = tl.zeros((CB, TY, TX), dtype=tl.float64 if F64 else tl.float32)
    for j in range(j0, j1):
        r = tl.load(order_ptr + j)
        _, _, x1, y1, x2, y2 = _box(rois_ptr, r, level_ptr, F64)
        sy, ey, by, gy, fary = _axis(y1, y2, scale, PH, RATIO, ALIGNED, F64)
        sx, ex, bx, gx, farx = _axis(x1, x2, scale, PW, RATIO, ALIGNED, F64)
        # The pixels the ROI's samples can read, one pixel of margin: does it touch the tile?
        hit = ((tl.floor(sy + ey) + 1.0 >= y0) & (tl.floor(sy) - 1.0 < y0 + TY)
               & (tl.floor(sx + ex) + 1.0 >= x0) & (tl.floor(sx) - 1.0 < x0 + TX) & (gy > 0) & (gx > 0))
        if hit:
            wx = tl.zeros((PWP, TX), dtype=acc.dtype)
            for px in range(0, PW):
                row, _ = _axis_weights(sx, bx, gx, px, farx, x0, TX, W, F64)
                wx += tl.where(cols[:, None] == px, row[None, :], 0.0)
            base = grad_ptr + (r.to(tl.int64) * C + ch.to(tl.int64))[:, None] * (PH * PW) + cols[None, :]
            gmask = cmask[:, None] & (cols < PW)[None, :]
            for py in range(0, PH):
                wy, n = _axis_weights(sy, by, gy, py, fary, y0, TY, H, F64)
                if n > 0:
                    g = tl.load(base + py * PW, mask=gmask, other=0.0).to(acc.dtype)  # (CB, PWP)
                    h = tl.sum(g[:, :, None] * wx[None, :, :], axis=1)  # (CB, TX)
                    acc += wy[None, :, None] * h[:, None, :]
    ys = y0 + tl.arange(0, TY)
    xs = x0 + tl.arange(0, TX)
    plane = dst + (image * C + ch.to(tl.int64))[:, None, None] * (tl.cast(H, tl.int64) * W)
    m = cmask[:, None, None] & (ys < H)[None, :, None] & (xs < W)[None, None, :]
    tl.store(plane + (ys * W)[None, :, None] + xs[None, None, :], acc.to(dst.dtype.element_ty), mask=m)
