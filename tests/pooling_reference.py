"""float64 references for the pooler types of issue 29, written apart from the implementation
(loops over ROIs, bins, cells and samples; numpy over channels). A reference implementation,
not a helper: tested on its own in ``test_pooling_reference.py``.

* :func:`prroi_pool_reference`: PrRoIPool in the convention of the authors' kernel and mmcv's
  ``PrRoIPool`` (box times the level scale, no half-pixel shift; the bilinear surface through the
  map's values at integer coordinates, zero beyond the map; the integral over each bin divided by
  its area; 0 for an empty bin), integrated by 2-point Gauss-Legendre on every piece of a unit
  cell the bin covers: exact, since the surface is bilinear inside a cell.
* :func:`roi_align_max_reference`: mmcv's ``RoIAlign(pool_mode="max")`` (the largest bilinear
  sample of a bin, torchvision's sample positions and border rule), with its gradient (to the
  four taps of the first largest sample). A bin without samples is 0 (mmcv writes ``-FLT_MAX``).
"""
import math

import numpy as np

GL = (0.5 - 0.5 / math.sqrt(3.0), 0.5 + 0.5 / math.sqrt(3.0))  # Gauss-Legendre nodes on [0, 1], weights 1/2


def surface(data: np.ndarray, y: float, x: float) -> np.ndarray:
    """The bilinear surface through ``data`` (C, H, W) at integer coordinates, 0 beyond: (C,)."""
    _, h, w = data.shape
    y0, x0 = math.floor(y), math.floor(x)
    val = np.zeros(data.shape[0])
    for i in (y0, y0 + 1):
        for j in (x0, x0 + 1):
            if 0 <= i < h and 0 <= j < w:
                val += data[:, i, j] * max(0.0, 1 - abs(y - i)) * max(0.0, 1 - abs(x - j))
    return val


def _pieces(lo: float, hi: float):
    """[lo, hi] cut at the integers: the pieces inside one unit cell each."""
    cuts = [lo] + [float(k) for k in range(math.floor(lo) + 1, math.ceil(hi))] + [hi]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def prroi_bin(data: np.ndarray, a: float, b: float, c: float, d: float) -> np.ndarray:
    """(1 / area) * integral over [a, b] x [c, d] of the surface, (C,); 0 for zero area."""
    if not (b > a and d > c):
        return np.zeros(data.shape[0])
    total = np.zeros(data.shape[0])
    for y0, y1 in _pieces(c, d):
        for x0, x1 in _pieces(a, b):
            for u in GL:
                for v in GL:
                    wgt = 0.25 * (y1 - y0) * (x1 - x0)
                    total += wgt * surface(data, y0 + u * (y1 - y0), x0 + v * (x1 - x0))
    return total / ((b - a) * (d - c))


def prroi_pool_reference(feature: np.ndarray, rois: np.ndarray, output_size, scale: float) -> np.ndarray:
    """PrRoIPool of ``rois`` (K, 5) ``batch, x1, y1, x2, y2`` from one map (B, C, H, W), float64."""
    ph, pw = output_size
    out = np.zeros((len(rois), feature.shape[1], ph, pw))
    for k, (b, x1, y1, x2, y2) in enumerate(rois.astype(np.float64)):
        X1, Y1, X2, Y2 = x1 * scale, y1 * scale, x2 * scale, y2 * scale
        bw, bh = max(X2 - X1, 0.0) / pw, max(Y2 - Y1, 0.0) / ph
        for p in range(ph):
            for q in range(pw):
                a, c = X1 + q * bw, Y1 + p * bh
                out[k, :, p, q] = prroi_bin(feature[int(b)], a, a + bw, c, c + bh)
    return out


def _mmcv_bilinear(data: np.ndarray, y: float, x: float):
    """torchvision / mmcv's bilinear read: (value (C,), [(i, j, weight)] taps); 0 and no taps
    more than one pixel off the map."""
    _, h, w = data.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(data.shape[0]), []
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    if yl >= h - 1:
        yh = yl = h - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= w - 1:
        xh = xl = w - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    taps = [(yl, xl, (1 - ly) * (1 - lx)), (yl, xh, (1 - ly) * lx), (yh, xl, ly * (1 - lx)), (yh, xh, ly * lx)]
    return sum(data[:, i, j] * wt for i, j, wt in taps), taps


def roi_align_max_reference(feature: np.ndarray, rois: np.ndarray, output_size, scale: float, sampling_ratio: int,
                            aligned: bool, grad: np.ndarray = None):
    """mmcv's max-mode RoIAlign of ``rois`` (K, 5) from one map (B, C, H, W), float64; with
    ``grad`` (K, C, Ph, Pw) also the gradient of the map. Returns (out, grad of the map or None)."""
    ph, pw = output_size
    channels = feature.shape[1]
    out = np.zeros((len(rois), channels, ph, pw))
    dfeat = np.zeros_like(feature) if grad is not None else None
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.astype(np.float64)):
        b = int(b)
        sx, sy = x1 * scale - offset, y1 * scale - offset
        rw, rh = x2 * scale - offset - sx, y2 * scale - offset - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw)
        for p in range(ph):
            for q in range(pw):
                best = np.full(channels, -np.inf)
                taps_of = [None] * channels
                for iy in range(gh):
                    y = sy + p * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = sx + q * bw + (ix + 0.5) * bw / gw
                        val, taps = _mmcv_bilinear(feature[b], y, x)
                        for c in range(channels):
                            if val[c] > best[c]:
                                best[c], taps_of[c] = val[c], taps
                out[k, :, p, q] = np.where(np.isneginf(best), 0.0, best)
                if grad is not None:
                    for c in range(channels):
                        for i, j, wt in taps_of[c] or []:
                            dfeat[b, c, i, j] += grad[k, c, p, q] * wt
    return out, dfeat
