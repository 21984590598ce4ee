"""Issue 29: the pooler types and options beyond ROIAlign, against references we did not write.

* ``ROIPool``: Detectron2's ``ROIPooler(pooler_type="ROIPool")`` (torchvision's ``roi_pool``),
  outputs and feature gradients bit for bit, ties, NaN and ``-FLT_MAX`` as the kernel treats them;
* ``PrRoIPool``: a float64 Gauss-Legendre integration (``pooling_reference.py``), ``gradcheck`` of
  the feature and box gradients, continuity in the box, box gradients through the pooler;
* ``pool_mode="max"``: mmcv's max mode in float64 (``pooling_reference.py``), outputs and gradients;
* ``roi_scale_factor``: mmdetection's rule (level of the unscaled box, the scaled box pooled)
  rebuilt from torchvision's ``roi_align``; ``all_levels``: the sum of torchvision's ``roi_align``
  over the levels, and the learned fusion by hand;
* the operators under ``torch.library.opcheck``, TorchScript, ``torch.jit.trace``, ``torch.export``
  and ``torch.compile``; the level with an empty map; sampling ratio -1.
"""
import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torchvision.ops import roi_align, roi_pool

from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.structures import Boxes

from roi_plugin import ROIAlignPooler
from roi_plugin.layers import roi_align_ops  # noqa: F401

from helpers import SCALES, TOL, ListCall, box_zoo, padded_pyramid, pyramid, random_boxes
from pooling_reference import prroi_pool_reference, roi_align_max_reference

IMAGE_SIZES = [(256, 320), (200, 288)]
FLT_MAX = 3.4028234663852886e38


@pytest.fixture(scope="module")
def batch():
    feats = padded_pyramid(IMAGE_SIZES)
    boxes = [box_zoo(h, w, seed=i) for i, (h, w) in enumerate(IMAGE_SIZES)]
    return feats, boxes


def _rois(boxes):
    return torch.cat([torch.cat([torch.full((len(b), 1), float(i), dtype=b.dtype), b], 1) for i, b in enumerate(boxes)])


def _levels(boxes):
    return assign_boxes_to_levels([Boxes(b) for b in boxes], 2, 5, 224, 4)


# ------------------------------------------------------------------------------------ ROIPool
class _TorchvisionROIPool(torch.nn.Module):
    """torchvision's roi_pool on the level Detectron2's rule picks, in the maps' dtype
    (ROIPooler itself: its Boxes are float32, so float64 maps fail in torchvision's kernel)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, feats, box_lists):
        boxes = [getattr(b, "tensor", b).to(feats[0].dtype) for b in box_lists]
        levels, rois = _levels(boxes), _rois(boxes)
        parts = [roi_pool(f, rois[levels == lv], self.output_size, s) for lv, (f, s) in enumerate(zip(feats, SCALES))]
        out = feats[0].new_zeros(len(rois), feats[0].shape[1], self.output_size, self.output_size)
        for lv, part in enumerate(parts):
            out = out.index_put(((levels == lv).nonzero().flatten(),), part)
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("output_size", [7, 14])
def test_roi_pool_equals_roipooler_bit_for_bit(batch, output_size, dtype):
    """Detectron2's ROIPooler (float32; torchvision per level for float64 maps)."""
    feats, boxes = batch
    feats = [f.to(dtype) for f in feats]
    grad = torch.randn(sum(len(b) for b in boxes), 8, output_size, output_size, dtype=dtype,
                       generator=torch.Generator().manual_seed(1))
    results = []
    reference = ROIPooler(output_size, SCALES, 0, "ROIPool") if dtype == torch.float32 \
        else _TorchvisionROIPool(output_size)
    for pooler in (reference, ROIAlignPooler(output_size, SCALES, 0, "ROIPool")):
        x = [f.clone().requires_grad_() for f in feats]
        out = pooler(x, [Boxes(b) if dtype == torch.float32 else b.to(dtype) for b in boxes])
        out.backward(grad)
        results.append((out, [torch.zeros_like(f) if f.grad is None else f.grad for f in x]))
    (ref, ref_grads), (out, grads) = results
    assert out.dtype == dtype and torch.equal(out, ref)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
    assert (ref.abs().amax((1, 2, 3)) > 0).float().mean() > 0.8  # not vacuous


def test_roi_pool_non_square_single_level_and_scale():
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    boxes = [random_boxes(30, 320, 448, 0, max_side=400), random_boxes(20, 320, 448, 1, max_side=400)]
    rois = _rois(boxes)
    pooler = ROIAlignPooler((3, 5), (1 / 8,), 0, "ROIPool")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = roi_pool(xa, rois, (3, 5), 1 / 8)
    out = pooler([xb], boxes)
    g = torch.randn_like(ref)
    ref.backward(g)
    out.backward(g)
    assert torch.equal(out, ref) and torch.equal(xb.grad, xa.grad)


def test_roi_pool_ties_nan_and_the_kernels_floor():
    """Ties: the first pixel in row-major order wins (the kernel's strict ``>``), so the gradient
    lands where torchvision puts it; NaN is never the maximum; a bin holding only values at or
    below -FLT_MAX gives -FLT_MAX and no gradient."""
    x = torch.zeros(1, 4, 12, 12)
    x[0, 0] = 1.0  # every pixel ties
    x[0, 1] = torch.arange(12.0).repeat(12, 1) // 3  # ties along rows of 3
    x[0, 2] = float("nan")
    x[0, 2, ::2, ::3] = -2.0
    x[0, 2, 5, 5] = 7.0
    x[0, 3] = -float("inf")
    x[0, 3, :, 6:] = -FLT_MAX
    x[0, 3, 10, 11] = 3.0
    boxes = torch.tensor([[0.0, 0.0, 11.0, 11.0], [1.0, 2.0, 8.0, 9.0], [5.0, 0.0, 11.0, 6.0]])
    pooler = ROIAlignPooler(4, (1.0,), 0, "ROIPool")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = roi_pool(xa, _rois([boxes]), 4, 1.0)
    out = pooler([xb], [boxes])
    g = torch.rand_like(ref) + 0.5
    ref.backward(g)
    out.backward(g)
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(xb.grad, xa.grad)
    assert bool((out[:, 3] == -FLT_MAX).any())  # the floor is exercised


# ------------------------------------------------------------------------------------ PrRoIPool
def _prroi_reference(feats, boxes, output_size, levels=None):
    rois = _rois(boxes).double().numpy()
    levels = _levels(boxes) if levels is None else levels
    out = np.zeros((len(rois), feats[0].shape[1], *output_size))
    for lv, (f, scale) in enumerate(zip(feats, SCALES[:len(feats)])):
        sel = (levels == lv).nonzero().flatten().numpy()
        if len(sel):
            out[sel] = prroi_pool_reference(f.double().numpy(), rois[sel], output_size, scale)
    return torch.from_numpy(out)


@pytest.mark.parametrize("output_size", [(7, 7), (3, 5)])
def test_prroi_pool_equals_float64_integration(output_size):
    """float32 within 1e-5 and float64 within 1e-10 of the exact integral, every level; boxes
    across the border, larger than the image, tiny and empty."""
    sizes = [(128, 160), (96, 128)]
    feats = padded_pyramid(sizes, channels=3, seed=4)
    boxes = [box_zoo(h, w, n_random=8, seed=7 + i) for i, (h, w) in enumerate(sizes)]
    ref = _prroi_reference(feats, boxes, output_size)
    pooler = ROIAlignPooler(output_size, SCALES, 0, "PrRoIPool")
    out32 = pooler(feats, boxes)
    out64 = pooler([f.double() for f in feats], [b.double() for b in boxes])
    err32, err64 = (out32.double() - ref).abs().max().item(), (out64 - ref).abs().max().item()
    assert err32 < 1e-5 and err64 < 1e-10, (err32, err64)
    assert set(_levels(boxes).tolist()) == {0, 1, 2, 3}
    assert (ref.abs().amax((1, 2, 3)) > 0.05).float().mean() > 0.8  # not vacuous


@pytest.mark.slow
def test_prroi_pool_gradcheck_features_and_boxes():
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 2, 16 // 2**i, 20 // 2**i, dtype=torch.float64, generator=g, requires_grad=True)
             for i in range(3)]
    boxes = [torch.tensor([[0.3, 0.7, 9.1, 13.2], [-3.2, 20.1, 30.3, 64.6], [50.2, 40.1, 79.7, 63.3]],
                          dtype=torch.float64, requires_grad=True),
             torch.tensor([[2.5, 3.6, 77.9, 60.2], [40.3, 1.4, 47.1, 7.7]], dtype=torch.float64, requires_grad=True)]
    pooler = ROIAlignPooler((2, 3), (1 / 4, 1 / 8, 1 / 16), 0, "PrRoIPool", canonical_box_size=32, canonical_level=3)
    assert set(assign_boxes_to_levels([Boxes(b.detach()) for b in boxes], 2, 4, 32, 3).tolist()) == {0, 1, 2}
    assert torch.autograd.gradcheck(lambda *t: pooler(list(t[:3]), list(t[3:])), (*feats, *boxes), eps=1e-6,
                                    atol=1e-6)


def test_prroi_pool_is_continuous_in_the_box():
    """A sub-pixel move of one edge changes the output by about the move times the gradient
    (no jump, unlike ROIAlign's adaptive grids and ROIPool's rounding)."""
    feats = [f.double() for f in pyramid(1, 64, 64, channels=2, seed=6)]
    pooler = ROIAlignPooler(4, SCALES, 0, "PrRoIPool")
    box = torch.tensor([[10.3, 12.7, 41.9, 50.2]], dtype=torch.float64, requires_grad=True)
    out = pooler(feats, [box])
    direction = torch.randn(1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grad_out = torch.randn_like(out)
    (dbox,) = torch.autograd.grad((out * grad_out).sum(), box)
    slope = (dbox * direction).sum().item()
    errors = []
    for step in (1e-2, 1e-3, 1e-4):
        moved = pooler(feats, [box.detach() + step * direction])
        change = ((moved - out.detach()) * grad_out).sum().item()
        errors.append(abs(change - step * slope))
    # the first-order error shrinks with the step squared: a derivative, no jump
    assert errors[1] < errors[0] / 20 and errors[2] < errors[1] / 20 and errors[2] < 1e-3 * abs(1e-4 * slope)
    # ROIAlign (adaptive) jumps when a box crosses a grid-size boundary; PrRoIPool does not
    assert (pooler(feats, [box.detach() + 1e-6]) - out).abs().max() < 1e-4


def test_box_gradients_flow_through_the_pooler_only_for_prroi(batch):
    feats, boxes = batch
    for pooler_type in ("PrRoIPool", "ROIAlignV2", "ROIPool"):
        b = [x.clone().requires_grad_() for x in boxes]
        ROIAlignPooler(7, SCALES, 0, pooler_type)(feats, [Boxes(x) for x in b]).square().sum().backward()
        if pooler_type == "PrRoIPool":
            assert all(x.grad is not None and bool(torch.isfinite(x.grad).all()) for x in b)
            assert (b[0].grad.abs().sum(1) > 0).float().mean() > 0.5
        else:  # as torchvision's kernels: no gradient to the boxes
            assert all(x.grad is None for x in b)


@pytest.mark.slow  # gradcheck, up to 2.5 s
@pytest.mark.parametrize("option", ["all_levels", "roi_scale_factor"])
def test_prroi_box_gradient_with_options_is_the_finite_difference(option):
    feats = [f.double() for f in pyramid(1, 64, 64, channels=2, seed=8)]
    kw = {"all_levels": "sum"} if option == "all_levels" else {"roi_scale_factor": 1.3}
    pooler = ROIAlignPooler(3, SCALES, 0, "PrRoIPool", **kw)
    box = torch.tensor([[8.3, 6.1, 40.2, 30.9], [20.2, 20.7, 60.1, 61.3]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: pooler(feats, [b]), (box,), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------ max mode
@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_max_mode_equals_float64_reference(pooler_type, sampling_ratio):
    sizes = [(128, 160), (96, 128)]
    feats = padded_pyramid(sizes, channels=3, seed=9)
    boxes = [box_zoo(h, w, n_random=10, seed=3 + i) for i, (h, w) in enumerate(sizes)]
    levels = _levels(boxes)
    rois = _rois(boxes).double().numpy()
    grad = torch.randn(len(rois), 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = np.zeros((len(rois), 3, 5, 5))
    ref_grads = []
    for lv, (f, scale) in enumerate(zip(feats, SCALES)):
        sel = (levels == lv).nonzero().flatten().numpy()
        out, dfeat = roi_align_max_reference(f.double().numpy(), rois[sel], (5, 5), scale, sampling_ratio,
                                             pooler_type == "ROIAlignV2", grad[sel].numpy())
        ref[sel] = out
        ref_grads.append(torch.from_numpy(dfeat))
    ref = torch.from_numpy(ref)
    pooler = ROIAlignPooler(5, SCALES, sampling_ratio, pooler_type, pool_mode="max")
    out32 = pooler(feats, boxes)  # float32 sample coordinates: mean mode's tolerance against float64
    assert (out32.double() - ref).abs().max() < TOL
    x = [f.double().requires_grad_() for f in feats]
    out64 = pooler(x, [b.double() for b in boxes])
    assert (out64 - ref).abs().max() < 1e-10
    out64.backward(grad)
    for ours, theirs in zip(x, ref_grads):
        assert (ours.grad - theirs).abs().max() < 1e-10
    # mean mode would differ: the comparison is not vacuous
    assert (ROIAlignPooler(5, SCALES, sampling_ratio, pooler_type)(feats, boxes).double() - ref).abs().max() > 0.1


@pytest.mark.slow
def test_max_mode_gradcheck():
    g = torch.Generator().manual_seed(5)
    feats = [torch.randn(1, 2, 16 // 2**i, 20 // 2**i, dtype=torch.float64, generator=g, requires_grad=True)
             for i in range(2)]
    boxes = [torch.tensor([[0.3, 0.7, 9.1, 13.2], [-3.2, 20.1, 30.3, 64.6], [5.2, 4.1, 60.7, 43.3]],
                          dtype=torch.float64)]
    pooler = ROIAlignPooler(3, (1 / 4, 1 / 8), 0, "ROIAlignV2", canonical_box_size=32, canonical_level=3,
                            pool_mode="max")
    assert torch.autograd.gradcheck(lambda *f: pooler(list(f), boxes), tuple(feats), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------ options
def test_roi_scale_factor_is_mmdetections_rule(batch):
    """mmdetection's SingleRoIExtractor: the level from the unscaled box, then the box scaled
    about its centre (``w' = w * s``) and pooled; here with torchvision's roi_align per level."""
    feats, boxes = batch
    factor = 1.4
    levels = _levels(boxes)
    rois = _rois(boxes)
    ctr, wh = (rois[:, 1:3] + rois[:, 3:5]) * 0.5, (rois[:, 3:5] - rois[:, 1:3]) * factor
    scaled = torch.cat([rois[:, :1], ctr - wh * 0.5, ctr + wh * 0.5], 1)
    ref = torch.zeros(len(rois), 8, 7, 7)
    for lv, (f, s) in enumerate(zip(feats, SCALES)):
        sel = levels == lv
        ref[sel] = roi_align(f, scaled[sel], 7, s, 0, True)
    out = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2", roi_scale_factor=factor)(feats, boxes)
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL)
    # routing the scaled box instead would move some boxes a level up
    assert bool((_levels([scaled[:, 1:]]) != levels).any())


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIPool", "PrRoIPool"])
def test_all_levels_sum_is_the_sum_over_levels(batch, pooler_type):
    feats, boxes = batch
    out = ROIAlignPooler(7, SCALES, 0, pooler_type, all_levels="sum")(feats, boxes)
    ref = sum(ROIAlignPooler(7, (s,), 0, pooler_type)([f], boxes) for f, s in zip(feats, SCALES))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    if pooler_type == "ROIAlignV2":  # and torchvision's roi_align on every level
        rois = _rois(boxes)
        tv = sum(roi_align(f, rois, 7, s, 0, True) for f, s in zip(feats, SCALES))
        torch.testing.assert_close(out, tv, rtol=0, atol=TOL)


def test_all_levels_conv_is_grois_learned_fusion(batch):
    feats, boxes = batch
    torch.manual_seed(0)
    pooler = ROIAlignPooler(7, SCALES, 2, "ROIAlignV2", all_levels="conv", channels=8)
    out = pooler(feats, boxes)
    rois = _rois(boxes)
    pre, post = pooler.fuse.pre, pooler.fuse.post
    summed = sum(F.relu(pre(roi_align(f, rois, 7, s, 2, True))) for f, s in zip(feats, SCALES))
    torch.testing.assert_close(out, F.relu(post(summed)), rtol=0, atol=1e-4)
    out.sum().backward()
    assert pooler.fuse.pre.weight.grad.abs().sum() > 0  # trains
    assert sorted(pooler.state_dict()) == ["fuse.post.bias", "fuse.post.weight", "fuse.pre.bias", "fuse.pre.weight"]


def test_sampling_ratio_minus_one_is_adaptive(batch):
    feats, boxes = batch
    ref = ROIPooler(7, SCALES, -1, "ROIAlignV2")(feats, [Boxes(b) for b in boxes])
    for ratio in (-1, -5):
        p = ROIAlignPooler(7, SCALES, ratio, "ROIAlignV2")
        assert p.sampling_ratio == 0
        torch.testing.assert_close(p(feats, boxes), ref, rtol=0, atol=TOL)
    assert torch.equal(ROIAlignPooler(7, SCALES, -1, "ROIAlignV2")(feats, boxes),
                       ROIAlignPooler(7, SCALES, 0, "ROIAlignV2")(feats, boxes))


@pytest.mark.parametrize("pooler_type,mode", [("ROIAlignV2", "avg"), ("ROIPool", "avg"), ("PrRoIPool", "avg"),
                                              ("ROIAlign", "max")])
def test_box_on_a_level_with_an_empty_map_is_a_named_error(pooler_type, mode):
    feats = pyramid(1, 128, 96, channels=4)
    feats[3] = feats[3][:, :, :0]  # P5 with no rows
    pooler = ROIAlignPooler(7, SCALES, 0, pooler_type, pool_mode=mode)
    small = [torch.tensor([[4.0, 4.0, 40.0, 30.0]])]
    assert pooler(feats, small).shape == (1, 4, 7, 7)  # boxes of other levels pool
    with pytest.raises(ValueError, match=r"box 1 .* level 3 \(scale 0.03125\), whose feature map is 0x3"):
        pooler(feats, [torch.cat([small[0], torch.tensor([[0.0, 0.0, 1000.0, 800.0]])])])


# ------------------------------------------------------------------------------------ operators
KINDS = {
    "roi_pool": dict(pooler_type="ROIPool"),
    "prroi_pool": dict(pooler_type="PrRoIPool"),
    "roi_align_max": dict(pooler_type="ROIAlignV2", pool_mode="max"),
    "all_levels_conv": dict(pooler_type="ROIAlignV2", all_levels="conv", channels=4),
}


def _sample(dtype=torch.float32, requires_grad=False):
    feats = [f.to(dtype).requires_grad_(requires_grad) for f in pyramid(2, 64, 64, channels=4, seed=1)]
    boxes = [random_boxes(7, 64, 64, 0, max_side=90).to(dtype), random_boxes(5, 64, 64, 1, max_side=90).to(dtype)]
    return feats, boxes


@pytest.mark.slow  # up to 3 s each
@pytest.mark.parametrize("op", ["roi_pool", "prroi_pool", "roi_align_max"])
def test_opcheck(op):
    """torch.library.opcheck: schema, autograd registration, fake tensors, AOT dispatch."""
    feats, boxes = _sample(torch.float64, requires_grad=True)
    rois = _rois(boxes)
    if op == "prroi_pool":
        rois.requires_grad_()
    pooler_type = {"roi_pool": "ROIPool", "prroi_pool": "PrRoIPool", "roi_align_max": "ROIAlignV2"}[op]
    args = (feats, rois, [3, 3], list(SCALES), 0, pooler_type, 224.0, 4, True)
    torch.library.opcheck(getattr(torch.ops.roi_plugin, op).default, args)


@pytest.mark.parametrize("kind", list(KINDS))
def test_scripted_and_traced_equal_eager(kind):
    torch.manual_seed(0)
    pooler = ROIAlignPooler(5, SCALES, 0, **KINDS[kind]).eval()
    feats, boxes = _sample()
    eager = pooler(feats, boxes)
    assert torch.equal(torch.jit.script(pooler)(feats, [Boxes(b) for b in boxes]), eager)
    with torch.no_grad():
        traced = torch.jit.trace(ListCall(pooler), (*feats, *boxes), check_trace=False)
    feats2, boxes2 = pyramid(2, 64, 64, channels=4, seed=3), [random_boxes(9, 64, 64, 4), random_boxes(2, 64, 64, 5)]
    assert torch.equal(traced(*feats2, *boxes2), pooler(feats2, boxes2))


@pytest.mark.parametrize("kind", list(KINDS))
def test_torch_export_holds_the_operator(kind):
    torch.manual_seed(0)
    pooler = ROIAlignPooler(5, SCALES, 0, **KINDS[kind]).eval()
    feats, boxes = _sample()
    program = torch.export.export(ListCall(pooler), (*feats, *boxes))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    op = kind if kind != "all_levels_conv" else "roi_align_gather"
    assert f"roi_plugin.{op}.default" in targets, targets
    feats2, boxes2 = pyramid(2, 64, 64, channels=4, seed=3), [random_boxes(7, 64, 64, 4), random_boxes(5, 64, 64, 5)]
    torch.testing.assert_close(program.module()(*feats2, *boxes2), pooler(feats2, boxes2), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_compiled_equals_eager_forward_and_backward(kind):
    torch.manual_seed(0)
    pooler = ROIAlignPooler(5, SCALES, 0, **KINDS[kind])
    torch._dynamo.reset()
    compiled = torch.compile(ListCall(pooler), fullgraph=True)
    for seed in (0, 1):
        feats = [f.requires_grad_() for f in pyramid(2, 64, 64, channels=4, seed=seed)]
        boxes = [random_boxes(6 + seed, 64, 64, 2 * seed), random_boxes(5, 64, 64, 2 * seed + 1)]
        if kind == "prroi_pool":
            boxes = [b.requires_grad_() for b in boxes]
        eager = ListCall(pooler)(*feats, *boxes)
        grads = torch.autograd.grad(eager.square().sum(), feats + (boxes if kind == "prroi_pool" else []))
        out = compiled(*feats, *boxes)
        cgrads = torch.autograd.grad(out.square().sum(), feats + (boxes if kind == "prroi_pool" else []))
        # the operators run as in eager; inductor may reorder the fusion's convolutions
        torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-6)
        for a, b in zip(cgrads, grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fx_keeps_the_pooling_as_one_leaf_and_the_fusion_as_modules():
    torch.manual_seed(0)
    pooler = ROIAlignPooler(5, SCALES, 0, "ROIAlignV2", all_levels="conv", channels=4)
    gm = torch.fx.symbolic_trace(ListCall(pooler))
    calls = [n for n in gm.graph.nodes if n.op in ("call_function", "call_module")]
    assert [n.target.__name__ for n in calls if n.op == "call_function"][0] == "pool_box_lists"
    assert {str(n.target) for n in calls if n.op == "call_module"} >= {"pooler.fuse.pre", "pooler.fuse.post"}
    feats, boxes = _sample()
    assert torch.equal(gm(*feats, *boxes), pooler(feats, boxes))
    assert "pooler.fuse.pre.weight" in gm.state_dict()  # the parameters stay the graph module's


# ------------------------------------------------------------------------------------ from a config
CONFIGS = {
    "box PrRoIPool, mask ROIPool": ["MODEL.ROI_BOX_HEAD.POOLER_TYPE", "PrRoIPool",
                                    "MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIPool"],
    "all levels conv, roi_scale_factor": ["MODEL.ROI_PLUGIN.ALL_LEVELS", "conv", "MODEL.ROI_PLUGIN.ALL_LEVELS_KERNEL", 1,
                                          "MODEL.ROI_PLUGIN.ROI_SCALE_FACTOR", 1.2],
    "max mode, sampling ratio -1": ["MODEL.ROI_PLUGIN.POOL_MODE", "max", "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", -1],
}


@pytest.mark.slow  # a tiny Mask R-CNN built, one training step and inference: 5-13 s each
@pytest.mark.parametrize("route", ["PluginROIHeads", "ROIPluginModel"])
@pytest.mark.parametrize("case", list(CONFIGS))
def test_config_keys_reach_the_poolers_and_the_model_trains(case, route):
    """POOLER_TYPE (PrRoIPool, which Detectron2's ROIPooler refuses, and ROIPool) and the
    MODEL.ROI_PLUGIN pooler keys through both cfg routes; one training step and inference run."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from helpers import annotated_image, tiny_cfg

    opts = list(CONFIGS[case])
    if route == "ROIPluginModel":
        opts += ["MODEL.META_ARCHITECTURE", "ROIPluginModel", "MODEL.ROI_HEADS.NAME", "StandardROIHeads"]
    torch.manual_seed(0)
    model = build_model(tiny_cfg("gather", *opts))
    box, mask = model.roi_heads.box_pooler, model.roi_heads.mask_pooler
    assert isinstance(box, ROIAlignPooler) and isinstance(mask, ROIAlignPooler)
    if case.startswith("box PrRoIPool"):
        assert (box.pooler_type, mask.pooler_type) == ("PrRoIPool", "ROIPool")
    elif case.startswith("all levels"):
        assert box.all_levels == mask.all_levels == "conv" and box.roi_scale_factor == 1.2
        assert box.fuse.pre.in_channels == 16 and "roi_heads.box_pooler.fuse.pre.weight" in model.state_dict()
    else:
        assert box.pool_mode == mask.pool_mode == "max" and box.sampling_ratio == 0
    model.train()
    with EventStorage(0):
        losses = model([annotated_image(96, 128, 3, seed=s) for s in range(2)])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        model([{"image": annotated_image(96, 128, 0, seed=5)["image"]}])


def test_onnx_export_of_what_onnx_cannot_express_is_a_named_error(tmp_path):
    from roi_plugin.export.branches import ExportablePooler, boxes_to_rois, export_onnx

    feats, boxes = _sample()
    for kwargs in (dict(pooler_type="ROIPool"), dict(pooler_type="PrRoIPool"),
                   dict(pooler_type="ROIAlignV2", pool_mode="max")):
        with pytest.raises(NotImplementedError, match="no ONNX export"):
            export_onnx(ExportablePooler(ROIAlignPooler(5, SCALES, 0, **kwargs)), feats, boxes_to_rois(boxes),
                        str(tmp_path / "p.onnx"))


@pytest.mark.slow  # 150 optimisation steps
def test_docs_pooling_box_refinement_example_runs(capsys):
    """docs/pooling.md's example, as printed there: gradient ascent on an IoU through PrRoIPool
    moves a poor box onto the object."""
    from helpers import REPO

    text = (REPO / "docs" / "pooling.md").read_text()
    block = text.split("**Refining a box by gradient ascent**", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    scope = {}
    exec(compile(block, "docs/pooling.md", "exec"), scope)
    assert scope["first_iou"] < 0.3 and scope["iou"].item() > 0.94
    expected = block.strip().splitlines()[-1].lstrip("# ").split(":")[0]
    assert capsys.readouterr().out.strip() == expected


@pytest.mark.parametrize("kwargs", [dict(all_levels="sum"), dict(roi_scale_factor=1.3),
                                    dict(all_levels="conv", channels=4, all_levels_kernel=1)])
def test_onnx_export_of_the_roialign_options_matches_eager(tmp_path, kwargs):
    """all_levels and roi_scale_factor export with ONNX RoiAlign (one call per level)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from roi_plugin.export.branches import ExportablePooler, boxes_to_rois, export_onnx

    torch.manual_seed(0)
    pooler = ROIAlignPooler(5, SCALES, 2, "ROIAlignV2", **kwargs).eval()
    feats, boxes = _sample()
    path = str(tmp_path / "pooler.onnx")
    export_onnx(ExportablePooler(pooler), feats, boxes_to_rois(boxes), path)
    feats2, boxes2 = pyramid(3, 64, 64, channels=4, seed=3), [random_boxes(n, 64, 64, 9 + n) for n in (4, 0, 6)]
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(names, [f.numpy() for f in feats2] + [boxes_to_rois(boxes2).numpy()])))[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, pooler(feats2, boxes2).numpy(), atol=TOL, rtol=0)


def test_rotated_boxes_with_all_levels_and_roi_scale_factor():
    feats = pyramid(1, 128, 96, channels=4, seed=2)
    g = torch.Generator().manual_seed(0)
    boxes = torch.cat([torch.rand(12, 2, generator=g) * 90, 8 + torch.rand(12, 2, generator=g) * 150,
                       (torch.rand(12, 1, generator=g) - 0.5) * 180], 1)
    out = ROIAlignPooler(5, SCALES, 0, "ROIAlignRotated", all_levels="sum")(feats, [boxes])
    ref = sum(ROIAlignPooler(5, (s,), 0, "ROIAlignRotated")([f], [boxes]) for f, s in zip(feats, SCALES))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    scaled = boxes.clone()
    scaled[:, 2:4] *= 1.5
    big = ROIAlignPooler(5, SCALES, 0, "ROIAlignRotated", roi_scale_factor=1.5, canonical_box_size=224)(feats, [boxes])
    same_levels = ROIAlignPooler(5, SCALES, 0, "ROIAlignRotated", canonical_box_size=224 * 1.5)(feats, [scaled])
    torch.testing.assert_close(big, same_levels, rtol=0, atol=0)
