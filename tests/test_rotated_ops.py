"""roi_plugin's pure-PyTorch ``detectron2::box_iou_rotated`` / ``detectron2::nms_rotated``
against references we did not write: torchvision's ``box_iou`` and ``nms`` for axis-aligned
boxes, closed-form areas, float64 Monte-Carlo integration over Detectron2's own corner
convention (``Visualizer.draw_rotated_box_with_label``), and a brute-force greedy NMS with the
compiled kernel's rules (``scores.sort(descending=True)``, suppress when IoU >= threshold).
Detectron2's own tests of these operators are ported in test_d2_nms_rotated.py and
test_d2_rotated_boxes.py.

The numerical tests call the pure functions (``rotated_ops.box_iou_rotated`` /
``rotated_ops.nms_rotated``) directly: with a compiled Detectron2, ``torch.ops.detectron2``
holds Detectron2's own kernels and the plugin registers nothing. The registration tests at the
end assert what ``torch.ops.detectron2`` holds in either case, and that Detectron2's API
(``pairwise_iou_rotated``, ``nms_rotated``, ``batched_nms_rotated``) reaches it.
"""
import math

import pytest
import torch
from torchvision.ops import box_iou, nms

import detectron2.layers
from detectron2.layers.rotated_boxes import pairwise_iou_rotated as d2_pairwise_iou_rotated

import roi_plugin  # noqa: F401  (registers the operators where detectron2 has no compiled _C)
from roi_plugin.layers import rotated_ops
from roi_plugin.layers.rotated_ops import (
    box_iou_rotated,
    nms_rotated,
    pairwise_iou_rotated_float64,
    register_rotated_ops,
)

from helpers import detectron2_compiled

COMPILED = detectron2_compiled()  # detectron2's _C loads: torch.ops.detectron2 holds its own kernels


def xyxy_to_rotated(b, angle=0.0, swap=False):
    """(N, 4) x1y1x2y2 -> (N, 5) cx cy w h angle; ``swap`` exchanges w and h (for +-90 deg)."""
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if swap:
        w, h = h, w
    return torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, w, h, torch.full_like(w, angle)], 1)


def grid_boxes(n, seed, dtype=torch.float64):
    """Boxes on a 1/8 px grid (exact in float32 and float64), many of them overlapping."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 8 * 60, (n, 2), generator=g).to(dtype) / 8
    wh = torch.randint(1, 8 * 40, (n, 2), generator=g).to(dtype) / 8
    return torch.cat([xy, xy + wh], 1)


def random_rotated(n, seed, spread=40.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(n, 2, generator=g, dtype=dtype) * spread
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 30 + 0.5
    ang = torch.rand(n, 1, generator=g, dtype=dtype) * 720 - 360
    return torch.cat([ctr, wh, ang], 1)


@pytest.mark.parametrize("angle,swap,atol", [(0.0, False, 1e-12), (180.0, False, 1e-8), (-360.0, False, 1e-8),
                                             (90.0, True, 1e-8), (-90.0, True, 1e-8), (270.0, True, 1e-8)])
def test_axis_aligned_equals_torchvision_box_iou(angle, swap, atol):
    a, b = grid_boxes(60, 0), grid_boxes(70, 1)
    ref = box_iou(a, b)
    ours = pairwise_iou_rotated_float64(xyxy_to_rotated(a, angle, swap), xyxy_to_rotated(b, angle, swap))
    assert (ref > 0).sum() > 100  # the case is not trivially empty
    torch.testing.assert_close(ours, ref, atol=atol, rtol=0)
    # the operator's function: float32 in, float32 out
    op = box_iou_rotated(xyxy_to_rotated(a, angle, swap).float(),
                                              xyxy_to_rotated(b, angle, swap).float())
    assert op.dtype == torch.float32 and op.shape == (60, 70)
    torch.testing.assert_close(op.double(), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e6])
def test_closed_form_octagon_and_cross(offset):
    # a square and its 45-degree turn about the same centre meet in a regular octagon:
    # area (2*sqrt(2) - 2) a^2, so IoU = (2*sqrt(2) - 2) / (4 - 2*sqrt(2)) = 1/sqrt(2)
    # two 10x6 boxes crossing at right angles: I = 36, U = 84
    f64 = torch.float64
    boxes1 = torch.tensor([[offset + 3, offset - 2, 7, 7, 10], [offset, offset, 10, 6, 33]], dtype=f64)
    boxes2 = torch.tensor([[offset + 3, offset - 2, 7, 7, 55], [offset, offset, 10, 6, 123]], dtype=f64)
    iou = pairwise_iou_rotated_float64(boxes1, boxes2).diagonal()
    torch.testing.assert_close(iou, torch.tensor([1 / math.sqrt(2), 36 / 84], dtype=f64), atol=1e-9, rtol=0)


def _corners_d2_visualizer(box):
    """Corners as Detectron2's Visualizer.draw_rotated_box_with_label computes them."""
    cx, cy, w, h, angle = box.tolist()
    theta = angle * math.pi / 180.0
    c, s = math.cos(theta), math.sin(theta)
    rect = [(-w / 2, h / 2), (-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2)]
    corners = [(s * yy + c * xx + cx, c * yy - s * xx + cy) for (xx, yy) in rect]
    return torch.tensor(corners, dtype=torch.float64)


def _inside(points, corners):
    """Points inside the convex quadrilateral ``corners`` (either orientation)."""
    edges = torch.roll(corners, -1, 0) - corners
    rel = points[:, None, :] - corners[None]
    cross = edges[None, :, 0] * rel[..., 1] - edges[None, :, 1] * rel[..., 0]
    return (cross >= 0).all(1) | (cross <= 0).all(1)


def test_monte_carlo_intersection():
    """Exact intersection areas against float64 Monte-Carlo integration (500k points/pair)."""
    g = torch.Generator().manual_seed(3)
    boxes1, boxes2 = random_rotated(12, 4, spread=12.0), random_rotated(12, 5, spread=12.0)
    iou = pairwise_iou_rotated_float64(boxes1, boxes2).diagonal()
    area1, area2 = boxes1[:, 2] * boxes1[:, 3], boxes2[:, 2] * boxes2[:, 3]
    inter = iou * (area1 + area2) / (1 + iou)
    checked = 0
    for k in range(12):
        c1, c2 = _corners_d2_visualizer(boxes1[k]), _corners_d2_visualizer(boxes2[k])
        # uniform points over box 1: corner + u * edge01 + v * edge03
        uv = torch.rand(500_000, 2, generator=g, dtype=torch.float64)
        pts = c1[0] + uv[:, :1] * (c1[1] - c1[0]) + uv[:, 1:] * (c1[3] - c1[0])
        frac = _inside(pts, c2).double().mean()
        sigma = math.sqrt(max(frac * (1 - frac), 1e-12) / pts.shape[0])
        assert abs(inter[k] / area1[k] - frac) < 5 * sigma + 1e-9, (k, inter[k] / area1[k], frac)
        checked += bool(frac > 0.05)
    assert checked >= 4  # enough pairs actually overlap


def test_invariances_and_pruning():
    a, b = random_rotated(40, 6), random_rotated(50, 7)
    iou = pairwise_iou_rotated_float64(a, b)
    assert (iou > 0).sum() > 50
    torch.testing.assert_close(pairwise_iou_rotated_float64(b, a), iou.T, atol=1e-12, rtol=0)
    # same boxes described differently: angle + 360; (h, w, angle + 90)
    a360 = a.clone()
    a360[:, 4] += 360
    a90 = a[:, [0, 1, 3, 2, 4]].clone()
    a90[:, 4] += 90
    for alt in (a360, a90):
        # 1e-7: the kernel's degree constant 0.01745329251 is pi/180 to 1e-12 relative only,
        # so 360 or 90 degrees more turn the box by a further ~1e-9 rad
        torch.testing.assert_close(pairwise_iou_rotated_float64(alt, b), iou, atol=1e-7, rtol=0)
    # rotating and translating the whole scene (both sets, same rigid motion)
    phi = 0.7
    R = torch.tensor([[math.cos(phi), math.sin(phi)], [-math.sin(phi), math.cos(phi)]], dtype=torch.float64)

    def move(x):
        y = x.clone()
        y[:, :2] = x[:, :2] @ R.T + torch.tensor([1234.5, -987.25], dtype=torch.float64)
        y[:, 4] += math.degrees(phi)  # counter-clockwise on the image (y down) = R above
        return y

    torch.testing.assert_close(pairwise_iou_rotated_float64(move(a), move(b)), iou, atol=1e-7, rtol=0)
    # the pair pruning loses nothing: every pair computed without it
    i, j = torch.meshgrid(torch.arange(40), torch.arange(50), indexing="ij")
    brute = rotated_ops._pair_iou(a[i.flatten()], b[j.flatten()]).view(40, 50)
    torch.testing.assert_close(iou, brute, atol=1e-12, rtol=0)


def test_degenerate_boxes():
    boxes = torch.tensor([[5, 5, 0, 4, 0], [5, 5, 4, 0, 30], [5, 5, 1e-8, 1e-8, 0], [5, 5, 4, 4, 0],
                          [5, 5, -4, -4, 0], [5, 5, -4, 4, 0]], dtype=torch.float32)
    iou = box_iou_rotated(boxes, boxes)
    # area w*h < 1e-14 -> IoU 0 (as the kernel); negative w and h is the same rectangle
    assert (iou[:3] == 0).all() and (iou[:, :3] == 0).all() and (iou[5] == 0).all()
    torch.testing.assert_close(iou[3:5, 3:5], torch.ones(2, 2))
    empty = box_iou_rotated(boxes[:0], boxes)
    assert empty.shape == (0, 6) and empty.dtype == torch.float32


def greedy_nms_reference(boxes, scores, thr):
    """The loop of nms_rotated_cpu.cpp over the operator's (float32) IoU matrix."""
    order = scores.sort(0, descending=True)[1]
    iou = box_iou_rotated(boxes.float(), boxes.float())
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for _i in range(len(order)):
        i = order[_i].item()
        if suppressed[i]:
            continue
        keep.append(i)
        for _j in range(_i + 1, len(order)):
            j = order[_j].item()
            if not suppressed[j] and iou[i, j] >= thr:
                suppressed[j] = True
    return torch.tensor(keep, dtype=torch.int64)


@pytest.mark.parametrize("thr", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_nms_matches_greedy_reference(thr):
    g = torch.Generator().manual_seed(9)
    base = random_rotated(100, 8, spread=60.0)
    noise = torch.randn(100, 5, generator=g, dtype=torch.float64)
    jitter = base + noise * torch.tensor([1, 1, 1, 1, 5.0], dtype=torch.float64)
    boxes = torch.cat([base, jitter]).float()  # IoUs spread over (0, 1)
    scores = (torch.rand(200, generator=g) * 20).round() / 20  # many ties
    keep = nms_rotated(boxes, scores, thr)
    assert keep.dtype == torch.int64
    ref = greedy_nms_reference(boxes, scores, thr)
    assert torch.equal(keep, ref)
    assert 10 < len(keep) < 200


def test_nms_axis_aligned_equals_torchvision():
    b = grid_boxes(400, 10)
    scores = torch.rand(400, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    for thr in (0.3, 0.5, 0.8):
        # torchvision suppresses IoU > thr, the kernel IoU >= thr: equal off exact ties
        assert torch.equal(nms_rotated(xyxy_to_rotated(b), scores, thr), nms(b, scores, thr))


def test_nms_threshold_is_inclusive_and_edge_cases():
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0, 0.0], [0.25, 0.5, 0.5, 1.0, 0.0], [9, 9, 1, 1, 0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert box_iou_rotated(boxes[:1], boxes[1:2]).item() == 0.5
    assert nms_rotated(boxes, scores, 0.5).tolist() == [0, 2]  # IoU == threshold suppresses
    assert nms_rotated(boxes, scores, 0.5001).tolist() == [0, 1, 2]
    assert nms_rotated(boxes, scores, 0.0).tolist() == [0]  # IoU 0 >= 0: everything else goes
    assert nms_rotated(boxes, scores, 1.5).tolist() == [0, 1, 2]
    assert nms_rotated(boxes[:0], scores[:0], 0.5).shape == (0,)
    assert nms_rotated(boxes.double(), scores.double(), 0.5).tolist() == [0, 2]


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        box_iou_rotated(torch.zeros(3, 4), torch.zeros(2, 5))
    with pytest.raises(TypeError, match="floating-point"):
        box_iou_rotated(torch.zeros(3, 5, dtype=torch.int64), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="scores"):
        nms_rotated(torch.zeros(3, 5), torch.zeros(2), 0.5)


def _is_ours(op) -> bool:
    """Whether ``torch.ops.detectron2.<name>`` is roi_plugin's custom op: its schema is the one
    ``torch.library`` infers from the pure function (Detectron2's C++ schema has unnamed
    arguments, ``(Tensor _0, Tensor _1, float _2) -> Tensor _0``)."""
    name = op._qualified_op_name.split("::")[1]
    # public as torch.library.infer_schema from torch 2.5; torch 2.4 has the same function (same
    # signature), which its torch.library.custom_op calls, under torch._library
    infer_schema = getattr(torch.library, "infer_schema", None)
    if infer_schema is None:
        from torch._library.infer_schema import infer_schema
    inferred = infer_schema(getattr(rotated_ops, name), mutates_args=())
    return str(op.default._schema) == f"detectron2::{name}{inferred}"


def test_registration_follows_detectron2():
    """Without a compiled _C the two operators are roi_plugin's, registered once (idempotent);
    with one they are Detectron2's own kernels and roi_plugin registers nothing."""
    ops = (torch.ops.detectron2.box_iou_rotated, torch.ops.detectron2.nms_rotated)  # both exist either way
    first = ops[1].default
    expected = () if COMPILED else ("box_iou_rotated", "nms_rotated")
    assert register_rotated_ops() == expected
    assert register_rotated_ops() == expected
    assert torch.ops.detectron2.nms_rotated.default is first
    assert [_is_ours(op) for op in ops] == [not COMPILED] * 2
    assert all(not q.startswith("detectron2::") for q in rotated_ops._registered) == COMPILED


def test_registration_keeps_existing_ops():
    # a namespace that already has one of the two (as a compiled detectron2 has): it is kept
    lib = torch.library.Library("roi_plugin_test_ns", "DEF")
    lib.define("box_iou_rotated(Tensor a, Tensor b) -> Tensor")
    lib.impl("box_iou_rotated", lambda a, b: torch.full((1,), 42.0), "CPU")
    assert register_rotated_ops("roi_plugin_test_ns") == ("nms_rotated",)
    assert register_rotated_ops("roi_plugin_test_ns") == ("nms_rotated",)
    assert torch.ops.roi_plugin_test_ns.box_iou_rotated(torch.zeros(1, 5), torch.zeros(1, 5)).item() == 42.0
    assert torch.ops.roi_plugin_test_ns.nms_rotated(torch.zeros(1, 5), torch.zeros(1), 0.5).tolist() == [0]


def test_detectron2_api_reaches_the_operators():
    """Detectron2's ``pairwise_iou_rotated``, ``nms_rotated`` and ``batched_nms_rotated`` call
    ``torch.ops.detectron2``: without _C they give the pure functions' results bit for bit; with
    _C, Detectron2's float32 kernels, which agree with them (IoU to float32 rounding; no IoU of
    these boxes lies within 1e-4 of a threshold, so the kept boxes are the same)."""
    g = torch.Generator().manual_seed(21)
    base = random_rotated(60, 22, spread=50.0)
    boxes = torch.cat([base, base + torch.randn(60, 5, generator=g, dtype=torch.float64) * 2]).float()
    scores = torch.rand(120, generator=g)
    classes = torch.randint(0, 3, (120,), generator=g)
    iou = box_iou_rotated(boxes, boxes)
    d2_iou = d2_pairwise_iou_rotated(boxes, boxes)
    assert d2_iou.dtype == torch.float32 and (iou > 0.1).sum() > 200
    if COMPILED:
        torch.testing.assert_close(d2_iou, iou, atol=1e-5, rtol=0)
    else:
        assert torch.equal(d2_iou, iou)
    for thr in (0.3, 0.5, 0.7):
        assert ((iou - thr).abs() > 1e-4).all()  # no near-ties: both kernels must agree exactly
        assert torch.equal(detectron2.layers.nms_rotated(boxes, scores, thr), nms_rotated(boxes, scores, thr))
        # batched: boxes of different classes never suppress each other
        per_class = torch.cat([(classes == c).nonzero()[:, 0][nms_rotated(boxes[classes == c], scores[classes == c], thr)]
                               for c in range(3)])
        expected = per_class[scores[per_class].sort(descending=True)[1]]
        assert torch.equal(detectron2.layers.batched_nms_rotated(boxes, scores, classes, thr), expected)


@pytest.fixture(scope="module")
def ops_namespace():
    """The ``torch.ops`` namespace holding roi_plugin's operators: ``detectron2`` on a pure-Python
    Detectron2; with a compiled one (which keeps its own) they are registered under a namespace
    of the tests' own, so that their contracts are checked in either case."""
    name = "roi_plugin_pure_ops" if COMPILED else "detectron2"
    assert register_rotated_ops(name) == ("box_iou_rotated", "nms_rotated")
    return name


def test_operator_contracts(ops_namespace):
    """torch.library.opcheck: schema, fake (meta) kernels, and that TorchScript sees the ops."""
    ns = getattr(torch.ops, ops_namespace)
    boxes = random_rotated(8, 12, spread=10.0).float()
    scores = torch.rand(8, generator=torch.Generator().manual_seed(13))
    torch.library.opcheck(ns.box_iou_rotated.default, (boxes, boxes[:5]))
    torch.library.opcheck(ns.nms_rotated.default, (boxes, scores, 0.3))
    assert torch.equal(ns.nms_rotated(boxes, scores, 0.3), nms_rotated(boxes, scores, 0.3))

    def in_detectron2(b: torch.Tensor, s: torch.Tensor):
        return torch.ops.detectron2.nms_rotated(b, s, 0.3), torch.ops.detectron2.box_iou_rotated(b, b)

    def in_private(b: torch.Tensor, s: torch.Tensor):
        return torch.ops.roi_plugin_pure_ops.nms_rotated(b, s, 0.3), torch.ops.roi_plugin_pure_ops.box_iou_rotated(b, b)

    f = in_private if COMPILED else in_detectron2
    scripted = torch.jit.script(f)
    for x, y in zip(scripted(boxes, scores), f(boxes, scores)):
        assert torch.equal(x, y)
