"""ROIAlignPooler against references we did not write: torchvision's roi_align and Detectron2's ROIPooler."""
import math

import pytest
import torch
from torchvision.ops import roi_align

from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.poolers import assign_boxes_to_levels as d2_assign_boxes_to_levels
from detectron2.structures import Boxes

from roi_plugin import SAMPLERS, GridSampleROIPooler, ROIAlignPooler, assign_boxes_to_levels

from helpers import SCALES, TOL, box_zoo, padded_pyramid, roipooler_reference, torchvision_reference

IMAGE_SIZES = [(256, 320), (200, 288), (224, 180)]


@pytest.fixture(scope="module")
def batch():
    feats = padded_pyramid(IMAGE_SIZES)
    boxes = [box_zoo(h, w, seed=i) for i, (h, w) in enumerate(IMAGE_SIZES)]
    return feats, boxes


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
@pytest.mark.parametrize("output_size", [7, 14])
def test_matches_detectron2_roipooler(batch, sampler, pooler_type, sampling_ratio, output_size):
    feats, boxes = batch
    ref = roipooler_reference(feats, boxes, pooler_type, sampling_ratio, output_size)
    pooler = ROIAlignPooler(output_size, SCALES, sampling_ratio, pooler_type, sampler=sampler)
    out = pooler(feats, [Boxes(b) for b in boxes])
    assert out.shape == ref.shape == (sum(len(b) for b in boxes), 8, output_size, output_size)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL)
    # The comparison is not vacuous: most ROIs pool non-zero features.
    assert (ref.abs().amax(dim=(1, 2, 3)) > 0.1).float().mean() > 0.8


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_matches_float64_torchvision(batch, sampler, aligned, sampling_ratio):
    """float32 pooler vs torchvision computed in float64, and float64 pooler vs the same."""
    feats, boxes = batch
    ref = torchvision_reference(feats, boxes, 7, sampling_ratio, aligned)
    pooler_type = "ROIAlignV2" if aligned else "ROIAlign"
    pooler = ROIAlignPooler(7, SCALES, sampling_ratio, pooler_type, sampler=sampler)
    out32 = pooler(feats, boxes)
    torch.testing.assert_close(out32.double(), ref, rtol=0, atol=TOL)
    out64 = pooler([f.double() for f in feats], [b.double() for b in boxes])
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, ref, rtol=0, atol=1e-10)


def test_single_level_pooler_matches_torchvision():
    feats = padded_pyramid([(128, 160)])[:1]
    boxes = [box_zoo(128, 160, n_random=10)]
    for sampler in SAMPLERS:
        out = ROIAlignPooler(7, (1 / 4,), 2, "ROIAlignV2", sampler=sampler)(feats, boxes)
        ref = roi_align(feats[0], [boxes[0]], 7, 1 / 4, 2, True)
        torch.testing.assert_close(out, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_feature_gradients_match_roipooler(batch, sampler):
    feats, boxes = batch
    grad = torch.randn(sum(len(b) for b in boxes), 8, 7, 7, generator=torch.Generator().manual_seed(1))
    grads = []
    for pooler in (
        ROIPooler(7, SCALES, 0, "ROIAlignV2"),
        ROIAlignPooler(7, SCALES, 0, "ROIAlignV2", sampler=sampler),
    ):
        x = [f.clone().requires_grad_() for f in feats]
        pooler(x, [Boxes(b) for b in boxes]).backward(grad)
        grads.append([f.grad for f in x])
    for ours, ref in zip(*grads):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("touched", ["few rows", "all rows"])
def test_gather_table_of_touched_rows(monkeypatch, touched):
    """The gather sampler copies only the rows its taps touch when that is at most half of the
    sampled levels (a few ROIs, as in the mask head), else whole levels. Both tables give
    ROIPooler's output and feature gradients; untouched rows get a gradient of exactly 0."""
    from roi_plugin.layers import gather_plan as pooler_module

    compacted = []
    table_blocks, compact_parts = pooler_module._table_blocks, pooler_module._compact_parts

    def spy(levels, index, num_rows):  # the forward's table
        out = table_blocks(levels, index, num_rows)
        compacted.append(out[2] < num_rows)
        return out

    def spy_backward(parts, rows, start, num_rows):  # the backward's gradient rows
        out = compact_parts(parts, rows, start, num_rows)
        compacted.append(out[1].numel() - 1 < num_rows)
        return out

    monkeypatch.setattr(pooler_module, "_table_blocks", spy)
    monkeypatch.setattr(pooler_module, "_compact_parts", spy_backward)
    sizes = [(256, 320), (224, 288)]
    feats = padded_pyramid(sizes, seed=5)
    if touched == "few rows":  # two P2 boxes in image 0, none in image 1
        boxes = [torch.tensor([[10.0, 12.0, 50.0, 60.0], [100.3, 80.9, 130.2, 141.0]]), torch.zeros(0, 4)]
    else:  # every image's whole P4 map
        boxes = [torch.tensor([[0.0, 0.0, 320.0, 256.0]]), torch.tensor([[0.0, 0.0, 288.0, 224.0]])]
    grad = torch.randn(sum(len(b) for b in boxes), 8, 14, 14, generator=torch.Generator().manual_seed(2))
    results = []
    for pooler in (ROIPooler(14, SCALES, 0, "ROIAlignV2"), ROIAlignPooler(14, SCALES, 0, "ROIAlignV2")):
        x = [f.clone().requires_grad_() for f in feats]
        out = pooler(x, [Boxes(b) for b in boxes])
        out.backward(grad)
        results.append((out, [f.grad for f in x]))
    (ref, ref_grads), (out, grads) = results
    assert compacted == [touched == "few rows"] * 2  # the forward's table and the backward's rows
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL)
    for ours, theirs in zip(grads, ref_grads):
        # Levels without ROIs are not in the graph (gradient None, i.e. 0); ROIPooler gives zeros.
        torch.testing.assert_close(torch.zeros_like(theirs) if ours is None else ours, theirs, rtol=0, atol=TOL)
    if touched == "few rows":
        assert grads[0][1].abs().sum() == 0 and grads[0][0].abs().sum() > 0  # only image 0 is touched


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("pooler_type,sampling_ratio", [("ROIAlignV2", 0), ("ROIAlignV2", 2), ("ROIAlign", 0)])
def test_gradcheck_float64(sampler, pooler_type, sampling_ratio):
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 2, 16 // 2**i, 20 // 2**i, dtype=torch.float64, generator=g) for i in range(3)]
    boxes = [
        torch.tensor([[0.0, 0.0, 9.0, 13.0], [-3.0, 20.0, 30.0, 64.0], [70.0, 50.0, 80.0, 64.0]], dtype=torch.float64),
        torch.tensor([[2.5, 3.5, 79.0, 60.0], [40.0, 1.0, 47.5, 7.0]], dtype=torch.float64),
    ]
    pooler = ROIAlignPooler(3, (1 / 4, 1 / 8, 1 / 16), sampling_ratio, pooler_type, canonical_box_size=32,
                            canonical_level=3, sampler=sampler)
    x = [f.requires_grad_() for f in feats]
    # every level is used, so every input gets a non-trivial gradient
    levels = assign_boxes_to_levels(torch.cat(boxes), 2, 4, 32, 3)
    assert set(levels.tolist()) == {0, 1, 2}
    assert torch.autograd.gradcheck(lambda *f: pooler(list(f), boxes), x, eps=1e-6, atol=1e-6, fast_mode=True)


def test_level_rule_equals_detectron2():
    g = torch.Generator().manual_seed(0)
    size = torch.exp(torch.empty(2000, 2).uniform_(math.log(0.5), math.log(2000), generator=g))
    xy = torch.rand(2000, 2, generator=g) * 500
    boxes = torch.cat([xy, xy + size], 1)
    # Boxes whose sqrt(area) sits on or within 1e-4 of a level boundary (112, 224, 448 px).
    edges = torch.tensor([56.0, 112.0, 224.0, 448.0, 896.0])
    eps = torch.tensor([-1e-4, -1e-5, 0.0, 1e-5, 1e-4])
    side = (edges[:, None] + eps[None, :]).flatten()
    boundary = torch.stack([torch.zeros_like(side), torch.zeros_like(side), side, side], 1)
    boxes = torch.cat([boxes, boundary])
    for min_level, max_level, canonical_size, canonical_level in [(2, 5, 224, 4), (3, 6, 224, 4), (2, 5, 160, 3)]:
        ours = assign_boxes_to_levels(boxes, min_level, max_level, canonical_size, canonical_level)
        ref = d2_assign_boxes_to_levels([Boxes(boxes)], min_level, max_level, canonical_size, canonical_level)
        assert torch.equal(ours, ref)
    # every level of P2..P5 is reached, and the rule is k0 + floor(log2(sqrt(wh)/224)) clipped
    ours = assign_boxes_to_levels(boxes, 2, 5, 224, 4)
    assert set(ours.tolist()) == {0, 1, 2, 3}
    assert assign_boxes_to_levels(torch.tensor([[0.0, 0, 224, 224], [0, 0, 223, 223]]), 2, 5, 224, 4).tolist() == [2, 1]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_follows_features(batch, sampler, dtype):
    feats, boxes = batch
    pooler = ROIAlignPooler(7, SCALES, 2, "ROIAlignV2", sampler=sampler)
    out = pooler([f.to(dtype) for f in feats], boxes)
    assert out.dtype == dtype
    ref = pooler([f.to(dtype).float() for f in feats], boxes)
    # sampled in float32 from the rounded inputs, rounded once at the end
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_empty_box_lists(batch, sampler):
    feats, boxes = batch
    pooler = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2", sampler=sampler)
    empty = torch.zeros(0, 4)
    out = pooler(feats, [empty, empty, empty])
    assert out.shape == (0, 8, 7, 7) and out.dtype == feats[0].dtype
    # one image without boxes: the others' ROIs, in order, same as ROIPooler
    lists = [boxes[0], empty, boxes[2]]
    out = pooler(feats, [Boxes(b) for b in lists])
    ref = roipooler_reference(feats, lists, "ROIAlignV2")
    assert out.shape == (len(boxes[0]) + len(boxes[2]), 8, 7, 7)
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_rois_keep_input_order_and_batch_index(batch, sampler):
    """Swapping the images swaps the output blocks: ROIs are routed to their own image."""
    feats, boxes = batch
    pooler = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2", sampler=sampler)
    out = pooler(feats, boxes)
    swapped = pooler([torch.stack([f[1], f[0], f[2]]) for f in feats], [boxes[1], boxes[0], boxes[2]])
    n0, n1 = len(boxes[0]), len(boxes[1])
    torch.testing.assert_close(swapped[:n1], out[n0 : n0 + n1])
    torch.testing.assert_close(swapped[n1 : n0 + n1], out[:n0])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_no_per_roi_feature_copy(sampler):
    """What autograd keeps for backward must not grow like ROIs x feature map (the notebook's
    per-ROI expand kept a whole map per ROI)."""
    feats = [f.requires_grad_() for f in padded_pyramid([(256, 256)], channels=32)]
    feat_bytes = sum(f.numel() * f.element_size() for f in feats)
    boxes = [box_zoo(256, 256, n_random=500)]
    saved = []

    def pack(t):
        # Bytes of the storage kept alive (an expanded index is a view of a small tensor).
        saved.append(0 if t.data_ptr() in {f.data_ptr() for f in feats} else t.untyped_storage().nbytes())
        return t

    pooler = ROIAlignPooler(7, SCALES, 2, "ROIAlignV2", sampler=sampler)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = pooler(feats, boxes)
    out_bytes = out.numel() * out.element_size()
    n = len(boxes[0])
    assert n * feat_bytes > 100 * sum(saved)  # per-ROI copies would be n * feat_bytes
    assert sum(saved) < 2 * out_bytes + feat_bytes
    out.sum().backward()
    assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in feats)


def test_grid_sample_pooler_is_the_grid_sample_sampler(batch):
    feats, boxes = batch
    p = GridSampleROIPooler(7, SCALES, 0, "ROIAlignV2")
    assert p.sampler == "grid_sample"
    torch.testing.assert_close(p(feats, boxes), ROIAlignPooler(7, SCALES, 0, "ROIAlignV2")(feats, boxes),
                               rtol=0, atol=TOL)


def test_accepts_tensors_and_non_float32_boxes(batch):
    feats, boxes = batch
    pooler = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2")
    a = pooler(feats, [Boxes(b) for b in boxes])
    b = pooler(feats, [x.double() for x in boxes])
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------- malformed input
def _pooler():
    return ROIAlignPooler(7, SCALES, 0, "ROIAlignV2")


@pytest.mark.parametrize(
    "make_input,error,match",
    [
        (lambda f, b: (f, [b[0][:, :3], b[1], b[2]]), ValueError, r"Nx4"),
        (lambda f, b: (f, [b[0][0]] + b[1:]), ValueError, r"Nx4"),
        (lambda f, b: (f, [torch.tensor([[0.0, 0, float("nan"), 4]])] + b[1:]), ValueError, r"non-finite"),
        (lambda f, b: (f, [torch.tensor([[0.0, 0, float("inf"), 4]])] + b[1:]), ValueError, r"non-finite"),
        (lambda f, b: (f, [torch.tensor([[-float("inf"), 0, 4, 4]])] + b[1:]), ValueError, r"non-finite"),
        (lambda f, b: (f, [torch.tensor([[10.0, 0, 4, 4]])] + b[1:]), ValueError, r"inverted"),
        (lambda f, b: (f[:3], b), ValueError, r"3 feature maps .* 4 scales"),
        (lambda f, b: (f + [f[-1]], b), ValueError, r"5 feature maps"),
        (lambda f, b: (f, b[:2]), ValueError, r"boxes for 2 images .* batch size 3"),
        (lambda f, b: (f, b + b[:1]), ValueError, r"boxes for 4 images .* batch size 3"),
        # Maps out of order (a level larger than the one before). Other sizes are accepted, as
        # ROIPooler accepts them (tests/test_upstream_detectron2.py pools one map at two scales).
        (lambda f, b: ([f[0], f[2], f[1], f[3]], b), ValueError, r"finest first.*grows"),
        (lambda f, b: ([f[0], f[1][:, :4], f[2], f[3]], b), ValueError, r"channels"),
        (lambda f, b: ([f[0]] + [x[0] for x in f[1:]], b), ValueError, r"4-D"),
        (lambda f, b: ([x.long() for x in f], b), TypeError, r"floating"),
        (lambda f, b: (f, "boxes"), TypeError, r"list"),
    ],
)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_malformed_input_raises(batch, make_input, error, match, sampler):
    feats, boxes = batch
    x, b = make_input(list(feats), list(boxes))
    with pytest.raises(error, match=match):
        ROIAlignPooler(7, SCALES, 0, "ROIAlignV2", sampler=sampler)(x, b)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pooler_type="PSRoIPool"), "pooler_type"),
        (dict(sampler="bilinear"), "sampler"),
        (dict(sampling_ratio=1.5), "sampling_ratio"),
        (dict(pool_mode="mean"), "pool_mode"),
        (dict(pool_mode="max", pooler_type="ROIPool"), "pool_mode='max' applies to"),
        (dict(roi_scale_factor=0.0), "roi_scale_factor"),
        (dict(all_levels="concat"), "all_levels"),
        (dict(all_levels="conv"), "channels"),
        (dict(all_levels="conv", channels=8, all_levels_kernel=2), "odd kernel_size"),
        (dict(scales=(1 / 4, 1 / 6)), "power of two"),
        (dict(scales=(1 / 4, 1 / 16)), "consecutive"),
        (dict(scales=()), "non-empty"),
        (dict(output_size=0), "output_size"),
        (dict(canonical_box_size=0), "canonical_box_size"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    args = dict(output_size=7, scales=SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ROIAlignPooler(**args)
