# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Pure-PyTorch ``detectron2::box_iou_rotated`` and ``detectron2::nms_rotated`` operators.

Detectron2's rotated detectors (``RRPN``, ``RROIHeads``) call two operators that only its
compiled ``_C`` defines: ``torch.ops.detectron2.box_iou_rotated(boxes1, boxes2)`` (through
``pairwise_iou_rotated``, in anchor and proposal matching) and
``torch.ops.detectron2.nms_rotated(boxes, scores, iou_threshold)`` (through
``batched_nms_rotated``, in proposal selection and inference). A pure-Python install of
Detectron2 has no ``_C``, so they are missing and rotated models cannot run.

:func:`register_rotated_ops` provides them through PyTorch's operator-extension API
(``torch.library.custom_op``), under the same names and schemas, **only when they are
absent**: a compiled Detectron2 (whose ``_C`` loads when ``detectron2.layers`` is imported)
keeps its own kernels. No Detectron2 code is patched; Detectron2 calls ``torch.ops`` and
finds the operator there. ``import roi_plugin`` calls it; calling it again does nothing.

Semantics follow ``detectron2/layers/csrc/box_iou_rotated/box_iou_rotated_utils.h`` and
``nms_rotated/nms_rotated_cpu.cpp``:

* a box is ``(x_ctr, y_ctr, w, h, angle)``, angle in degrees, counter-clockwise, with the
  corners of ``get_rotated_vertices`` (``theta = angle * 0.01745329251``);
* the kernel shifts both boxes of a pair by the mean of their centres for precision; here
  box 1 is taken relative to box 2's centre, in box 2's frame, which serves the same purpose
  (coordinates are small differences, whatever the boxes' offset in the image); a box of
  area ``w*h < 1e-14`` has IoU 0 with everything;
* ``IoU = I / (area1 + area2 - I)``; ``box_iou_rotated`` returns float32 (N, M);
* ``nms_rotated`` orders boxes by ``scores.sort(0, descending=True)`` (the same call, so the
  same order for ties), then greedily keeps a box and suppresses every later box whose IoU
  with it is ``>= iou_threshold`` (``>=``, unlike torchvision's ``>``); it returns the kept
  indices (int64) in that order. IoUs are rounded to the boxes' dtype before the comparison,
  as the kernel computes them in that dtype.

Both have an exportable form at the end of the file (``box_iou_rotated_static``,
``nms_rotated_static``): the same rules in tensor operations only, which
``roi_plugin/export/rotated_nms.py`` turns into ONNX operators.

The intersection area is exact up to float64 rounding: the rectangle of box 1 is clipped by
the four sides of box 2 (Sutherland-Hodgman, vectorised over pairs; a convex k-gon clipped by
a half-plane has at most k+1 corners, so 4 -> 5 -> 6 -> 7 -> 8 slots, with unused slots
repeating the last corner, which adds no area), then the shoelace formula. The kernel instead
collects edge crossings and contained corners with a 1e-5 tolerance and takes their convex
hull in float32; both compute the area of the same polygon. Pairs that an upper bound of the
IoU rules out (disjoint axis-aligned hulls, or for NMS a bound below the threshold) are
skipped, so matching a few ground-truth boxes against many anchors costs little; the
remaining pairs are processed in chunks of 4096, whose temporaries stay in the CPU's cache
(1.9 us a pair against 3.4 us in chunks of 32768, on one core of the project's machine).
On CPU both operators run on one intra-op thread (:mod:`.threads`, as the pooler's
operators): each pair chunk is a few dozen small tensor ops, and with 2 threads on a busy
2-core machine every op waits for the descheduled thread (32768 pairs took 0.7 s against
0.16 s on one thread while other jobs ran).
"""
from typing import Tuple

import torch

from .threads import single_threaded

__all__ = [
    "pairwise_iou_rotated_float64",
    "box_iou_rotated",
    "nms_rotated",
    "box_iou_rotated_static",
    "nms_rotated_static",
    "greedy_keep",
    "rotated_box_vertices",
    "register_rotated_ops",
]

_DEG_TO_RAD = 0.01745329251  # M_PI / 180 as written in box_iou_rotated_utils.h
_MIN_AREA = 1e-14  # boxes with w*h below this have IoU 0 (single_box_iou_rotated)
_PAIR_CHUNK = 1 << 12  # pairs clipped at once (about 1.3 MB of float64 temporaries: cache-sized)
_SEARCH_BLOCK = 1 << 22  # pair distances tested at once in the candidate search


def rotated_box_vertices(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 5) boxes -> (..., 4, 2) corners, in the order of ``get_rotated_vertices``.

    At angle 0 they are (x2, y2), (x2, y1), (x1, y1), (x1, y2): clockwise when y points
    up, counter-clockwise on the image (y down). ``boxes`` should be float64.
    """
    cx, cy, w, h, a = boxes.unbind(-1)
    theta = a * _DEG_TO_RAD
    cos2, sin2 = torch.cos(theta) * 0.5, torch.sin(theta) * 0.5
    x0 = cx + sin2 * h + cos2 * w
    y0 = cy + cos2 * h - sin2 * w
    x1 = cx - sin2 * h + cos2 * w
    y1 = cy - cos2 * h - sin2 * w
    xs = torch.stack([x0, x1, 2 * cx - x0, 2 * cx - x1], dim=-1)
    ys = torch.stack([y0, y1, 2 * cy - y0, 2 * cy - y1], dim=-1)
    return torch.stack([xs, ys], dim=-1)


def _clip(poly: torch.Tensor, axis: int, bound: torch.Tensor, side: float) -> torch.Tensor:
    """One Sutherland-Hodgman step for P convex polygons at once, in the clipping box's frame.

    Keeps the half-plane ``side * (bound - poly[..., axis]) >= 0``.

    Args:
        poly: (P, K, 2) corners in order; repeated corners are allowed.
        bound: (P,) the clipping line ``poly[..., axis] = side * half-extent``, as ``side * bound``.
    Returns:
        (P, K+1, 2) the clipped polygons; unused slots repeat the last corner (no area), and a
        polygon clipped away entirely becomes corners at the origin (no area).
    """
    P, K, _ = poly.shape
    d_cur = bound[:, None] - side * poly[..., axis]
    nxt = torch.roll(poly, -1, dims=1)
    d_nxt = torch.roll(d_cur, -1, dims=1)
    in_nxt = d_nxt >= 0
    crossing = (d_cur >= 0) != in_nxt
    # where the edge crosses, one end is >= 0 and the other < 0, so d_cur - d_nxt != 0
    t = d_cur / torch.where(crossing, d_cur - d_nxt, torch.ones_like(d_cur))
    cut = torch.lerp(poly, nxt, t[..., None])
    # edge i emits [its crossing point, if any] then [its end corner, if inside]
    cand = torch.stack([cut, nxt], dim=2).reshape(P, 2 * K, 2)
    valid = torch.stack([crossing, in_nxt], dim=2).reshape(P, 2 * K)
    # compact the valid points in order into K+1 slots (slot K+1 collects the rest)
    rank = valid.to(torch.int64).cumsum(dim=1)  # (int64: ONNX CumSum takes no bool)
    count = rank[:, -1:]
    pos = torch.where(valid, (rank - 1).clamp(max=K + 1), K + 1)
    out = cand.new_zeros(P, K + 2, 2).scatter_(1, pos[..., None].expand(P, 2 * K, 2), cand)
    slot = torch.minimum(torch.arange(K + 1, device=poly.device), (count - 1).clamp(min=0))
    return out.gather(1, slot[..., None].expand(P, K + 1, 2))


def _intersection_area(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Exact area of intersection of P pairs of float64 rotated boxes, (P, 5) each.

    The corners of box 1 (``get_rotated_vertices``) are taken relative to box 2's centre and
    expressed in box 2's frame, where box 2 is ``[-|w|/2, |w|/2] x [-|h|/2, |h|/2]``; then box 1
    is clipped by box 2's four sides and the area is the shoelace formula.
    """
    rel = torch.cat([b1[:, :2] - b2[:, :2], b1[:, 2:]], dim=1)
    corners = rotated_box_vertices(rel)  # (P, 4, 2) relative to box 2's centre
    theta = b2[:, 4] * _DEG_TO_RAD
    cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
    # box 2's width axis is (cos, -sin) and its height axis (sin, cos) (get_rotated_vertices)
    u = corners[..., 0] * cos - corners[..., 1] * sin
    v = corners[..., 0] * sin + corners[..., 1] * cos
    poly = torch.stack([u, v], dim=-1)
    half_w, half_h = b2[:, 2].abs() / 2, b2[:, 3].abs() / 2
    poly = _clip(poly, 0, half_w, 1.0)
    poly = _clip(poly, 0, half_w, -1.0)
    poly = _clip(poly, 1, half_h, 1.0)
    poly = _clip(poly, 1, half_h, -1.0)
    x, y = poly[..., 0], poly[..., 1]
    return 0.5 * (x * torch.roll(y, -1, dims=1) - y * torch.roll(x, -1, dims=1)).sum(dim=1).abs()


def _half_extents(b: torch.Tensor) -> torch.Tensor:
    """(N, 2) half-width and half-height of the axis-aligned hull of each rotated box."""
    theta = b[:, 4] * _DEG_TO_RAD
    c, s = torch.cos(theta).abs(), torch.sin(theta).abs()
    w, h = b[:, 2].abs(), b[:, 3].abs()
    return torch.stack([c * w + s * h, s * w + c * h], dim=1) / 2


def _candidate_mask(
    b1: torch.Tensor, b2: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor,
    min_iou,
) -> torch.Tensor:
    """(n, M) pairs of the rows ``b1`` (n, 5) and ``b2`` (M, 5) whose IoU may be non-zero, or
    may reach ``min_iou`` (a float, or a 0-d tensor in the exportable form).

    A pair is ruled out when an area is below 1e-14 (IoU 0 by definition) or when an upper
    bound of its IoU rules it out: the intersection is at most ``min(area1, area2, hull
    overlap)``, the hull overlap being that of the two axis-aligned hulls (exact at angle 0),
    and the union at least ``area1 + area2`` minus that. ``e1``, ``e2`` are the hulls' half
    extents, widened by 1e-6 relative so that no pair is dropped by rounding; ``a1``, ``a2`` the
    areas. With ``min_iou <= 0`` the bound rules out nothing that the overlap test keeps.
    """
    ox = (e1[:, None, 0] + e2[None, :, 0] - (b1[:, None, 0] - b2[None, :, 0]).abs()).clamp(min=0)
    oy = (e1[:, None, 1] + e2[None, :, 1] - (b1[:, None, 1] - b2[None, :, 1]).abs()).clamp(min=0)
    inter = torch.minimum(ox * oy, torch.minimum(a1[:, None], a2[None, :]))
    near = (inter > 0) & (a1[:, None] >= _MIN_AREA) & (a2[None, :] >= _MIN_AREA)
    if isinstance(min_iou, torch.Tensor) or min_iou > 0:
        bound = inter / (a1[:, None] + a2[None, :] - inter)
        near = near & (bound >= min_iou * (1 - 1e-6))
    return near


def _hulls(b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The widened half extents of the axis-aligned hulls and the areas of (N, 5) float64 boxes."""
    return _half_extents(b) * (1 + 1e-6) + 1e-9, b[:, 2] * b[:, 3]


def _candidate_pairs(
    b1: torch.Tensor, b2: torch.Tensor, upper_only: bool, min_iou: float = 0.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) of :func:`_candidate_mask`, by blocks of rows to bound memory.
    ``upper_only`` keeps ``i < j`` (b1 is b2)."""
    N, M = b1.shape[0], b2.shape[0]
    e1, a1 = _hulls(b1)
    e2, a2 = _hulls(b2)
    rows = max(1, _SEARCH_BLOCK // max(M, 1))
    ii, jj = [], []
    for s in range(0, N, rows):
        e = min(N, s + rows)
        near = _candidate_mask(b1[s:e], b2, e1[s:e], e2, a1[s:e], a2, min_iou)
        if upper_only:
            near &= torch.arange(s, e, device=b1.device)[:, None] < torch.arange(M, device=b1.device)[None, :]
        i, j = near.nonzero(as_tuple=True)
        ii.append(i + s)
        jj.append(j)
    if not ii:
        empty = torch.empty(0, dtype=torch.int64, device=b1.device)
        return empty, empty
    return torch.cat(ii), torch.cat(jj)


def _iou_of_pairs(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """IoU of P pairs of float64 boxes (P, 5) each: ``I / (area1 + area2 - I)``."""
    inter = _intersection_area(x1, x2)
    return inter / (x1[:, 2] * x1[:, 3] + x2[:, 2] * x2[:, 3] - inter)


def _pair_iou(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """:func:`_iou_of_pairs` in chunks of pairs (bounded memory)."""
    out = [_iou_of_pairs(b1[s : s + _PAIR_CHUNK], b2[s : s + _PAIR_CHUNK]) for s in range(0, b1.shape[0], _PAIR_CHUNK)]
    return torch.cat(out) if out else b1.new_empty(0)


def _check_boxes(boxes: torch.Tensor, name: str) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(
            f"{name} must be (N, 5) rotated boxes (x_ctr, y_ctr, w, h, angle), got shape {tuple(boxes.shape)}"
        )
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {boxes.dtype}")


def pairwise_iou_rotated_float64(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """(N, M) float64 IoU of rotated boxes ``(x_ctr, y_ctr, w, h, angle_degrees)``."""
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    b1, b2 = boxes1.detach().to(torch.float64), boxes2.detach().to(torch.float64)
    iou = torch.zeros(b1.shape[0], b2.shape[0], dtype=torch.float64, device=b1.device)
    i, j = _candidate_pairs(b1, b2, upper_only=False)
    iou[i, j] = _pair_iou(b1[i], b2[j])
    return iou


def box_iou_rotated(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """The ``detectron2::box_iou_rotated`` operator: (N, M) float32 IoU (one thread on CPU)."""
    with single_threaded(boxes1.device):
        return pairwise_iou_rotated_float64(boxes1, boxes2).to(torch.float32)


def nms_rotated(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """The ``detectron2::nms_rotated`` operator: kept indices (int64), by decreasing score (one
    thread on CPU)."""
    with single_threaded(dets.device):
        return _nms_rotated(dets, scores, iou_threshold)


def _nms_rotated(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    _check_boxes(dets, "dets")
    if scores.dim() != 1 or scores.shape[0] != dets.shape[0]:
        raise ValueError(f"scores must be ({dets.shape[0]},) to match dets, got shape {tuple(scores.shape)}")
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=dets.device)
    order = scores.sort(0, descending=True)[1]
    if iou_threshold <= 0:  # every IoU (0 included) is >= the threshold: the best box suppresses all
        return order[:1].clone()
    boxes = dets.detach()[order].to(torch.float64)
    i, j = _candidate_pairs(boxes, boxes, upper_only=True, min_iou=iou_threshold)
    iou = _pair_iou(boxes[i], boxes[j])
    if dets.dtype != torch.float64:  # the kernel's IoU is a scalar_t
        iou = iou.to(torch.float32)
    hit = iou >= iou_threshold
    # greedy pass over "sorted box i suppresses sorted box j > i" edges, in CSR form
    src, dst = i[hit].cpu(), j[hit].cpu()
    src, perm = src.sort(stable=True)
    dst = dst[perm].numpy()
    n = boxes.shape[0]
    starts = torch.searchsorted(src, torch.arange(n + 1)).tolist()
    suppressed = [False] * n
    keep = []
    for k in range(n):
        if suppressed[k]:
            continue
        keep.append(k)
        for m in dst[starts[k] : starts[k + 1]].tolist():
            suppressed[m] = True
    return order[torch.tensor(keep, dtype=torch.int64, device=order.device)]


# ----------------------------------------------------------------------- the exportable forms
# The operators above find candidate pairs by blocks of rows, compute their IoU in chunks and run
# the greedy pass in Python: shapes and loop counts a trace would freeze. The forms below compute
# the same thing with tensor operations only (the candidate mask of all pairs at once, the exact
# IoU of its pairs, a TorchScript loop for the greedy pass), so that ``torch.onnx.export`` turns
# them into ONNX operators (``NonZero``, ``ScatterElements``, ``TopK``, ``Loop``):
# ``roi_plugin/export/rotated_nms.py`` puts them in place of ``detectron2::box_iou_rotated`` /
# ``detectron2::nms_rotated`` in an ONNX graph. The rules are the functions above, so the values
# are the same; memory is O(N * M) (the dense candidate mask and IoU matrix), not bounded.


def _dense_iou(b1: torch.Tensor, b2: torch.Tensor, min_iou, upper_only: bool) -> torch.Tensor:
    """(N, M) float64 IoU of float64 boxes, 0 where :func:`_candidate_mask` rules a pair out
    (and, with ``upper_only``, for ``i >= j``); no blocks, chunks or Python branches on data."""
    n, m = b1.shape[0], b2.shape[0]
    e1, a1 = _hulls(b1)
    e2, a2 = _hulls(b2)
    near = _candidate_mask(b1, b2, e1, e2, a1, a2, min_iou)
    if upper_only:
        near = near & (torch.arange(n, device=b1.device)[:, None] < torch.arange(m, device=b1.device)[None, :])
    i, j = near.nonzero(as_tuple=True)
    return b1.new_zeros((n, m)).index_put((i, j), _iou_of_pairs(b1[i], b2[j]))


def box_iou_rotated_static(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """:func:`box_iou_rotated` in exportable form: (N, M) float32 IoU, the same values."""
    return _dense_iou(boxes1.to(torch.float64), boxes2.to(torch.float64), 0.0, upper_only=False).to(torch.float32)


@torch.jit.script_if_tracing
def greedy_keep(suppress: torch.Tensor) -> torch.Tensor:
    """The greedy pass of NMS: ``suppress`` (n, n) bool, ``[i, j]``: box i (in score order)
    suppresses box j > i if kept. Returns (n,) bool, the boxes kept.

    Box k is kept when no kept box before it suppresses it; by step k every box before k is
    settled, so one pass in order is the greedy rule. A loop of n steps (ONNX ``Loop`` when
    traced: TorchScript keeps the loop), each one row operation.
    """
    n = suppress.shape[0]
    removed = torch.zeros([n], dtype=torch.bool, device=suppress.device)
    for k in range(n):
        removed = removed | (suppress[k] & ~removed[k])
    return ~removed


def nms_rotated_static(dets: torch.Tensor, scores: torch.Tensor, iou_threshold) -> torch.Tensor:
    """:func:`nms_rotated` in exportable form: the same kept indices (int64), by decreasing score.

    ``iou_threshold``: a float, or a 0-d float32 tensor (a graph input). Order from
    ``scores.sort(0, descending=True)`` (ONNX ``TopK``, which breaks ties by index: a stable
    sort; PyTorch's CPU sort does not promise one, so boxes of *equal* scores may be visited in
    another order than :func:`nms_rotated`'s), IoU of the candidate pairs exact in float64 and
    rounded to the boxes' dtype, suppression at IoU ``>=`` threshold, then :func:`greedy_keep`.
    A threshold <= 0 suppresses every later box (IoU 0 included), as :func:`nms_rotated` does.
    """
    order = scores.sort(0, descending=True)[1]
    boxes = dets.detach()[order].to(torch.float64)
    iou = _dense_iou(boxes, boxes, iou_threshold, upper_only=True)
    if dets.dtype != torch.float64:  # the kernel's IoU is a scalar_t
        iou = iou.to(torch.float32)
    n = boxes.shape[0]
    later = torch.arange(n, device=dets.device)[:, None] < torch.arange(n, device=dets.device)[None, :]
    return order[greedy_keep((iou >= iou_threshold) & later)]


def _box_iou_rotated_fake(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]), dtype=torch.float32)


def _nms_rotated_fake(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    n = torch.library.get_ctx().new_dynamic_size()
    return dets.new_empty((n,), dtype=torch.int64)


_OPS = {
    "box_iou_rotated": (box_iou_rotated, _box_iou_rotated_fake),
    "nms_rotated": (nms_rotated, _nms_rotated_fake),
}
_registered = {}  # "namespace::name" -> CustomOpDef we created (kept alive: dropping it unregisters)


def register_rotated_ops(namespace: str = "detectron2") -> Tuple[str, ...]:
    """Define ``detectron2::box_iou_rotated`` / ``detectron2::nms_rotated`` where missing.

    Imports ``detectron2.layers`` first, which loads a compiled ``detectron2._C`` if there is
    one (it registers its own operators then, and those are left alone). Idempotent.
    ``namespace`` exists for tests. Returns the names of the operators of ``namespace`` that
    come from this module.
    """
    import detectron2.layers  # noqa: F401  (loads detectron2._C where it exists)

    ns = getattr(torch.ops, namespace)
    for name, (impl, fake) in _OPS.items():
        qualname = f"{namespace}::{name}"
        if qualname in _registered or hasattr(ns, name):
            continue
        op = torch.library.custom_op(qualname, impl, mutates_args=())
        op.register_fake(fake)
        _registered[qualname] = op
    return tuple(q.split("::")[1] for q in _registered if q.startswith(namespace + "::"))
