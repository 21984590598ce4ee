"""Bad input: the pooler and the heads either give the reference result or raise a clear error.

References: Detectron2's ``ROIPooler`` (torchvision's ``roi_align`` kernel per level) and
Detectron2's ``assign_boxes_to_levels``; the heads' training/inference is Detectron2's.
"""


import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from detectron2.modeling import build_model
from detectron2.modeling.poolers import assign_boxes_to_levels as d2_assign_boxes_to_levels
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torchvision.ops import roi_align

from roi_plugin import SAMPLERS, ROIAlignPooler, assign_boxes_to_levels

from helpers import SCALES, TOL, annotated_image, pyramid, roipooler_reference, tiny_cfg

GOOD = torch.tensor([[10.0, 12.0, 60.0, 70.0], [0.0, 0.0, 96.0, 128.0], [30.0, 40.0, 38.0, 47.0]])


def _case_zero_area():
    return pyramid(), [
        torch.tensor([[10.0, 10.0, 10.0, 10.0], [5.0, 5.0, 5.0, 30.0], [20.0, 3.0, 40.0, 3.0]]),
        GOOD,
    ]


def _case_outside_image():
    return pyramid(), [
        torch.tensor(
            [
                [-100.0, -100.0, -50.0, -50.0],
                [200.0, 200.0, 260.0, 300.0],
                [-30.0, 10.0, -2.0, 40.0],
                [97.0, 0.0, 150.0, 20.0],
            ]
        ),
        GOOD,
    ]


def _case_larger_than_image():
    return pyramid(), [torch.tensor([[-50.0, -60.0, 200.0, 300.0], [-1000.0, -1000.0, 1000.0, 1000.0]]), GOOD]


def _case_border():
    return pyramid(), [
        torch.tensor([[-3.0, -3.0, 1.0, 1.0], [95.5, 127.5, 96.0, 128.0], [90.0, 0.0, 96.0, 6.0]]),
        GOOD,
    ]


def _case_empty_in_one_image():
    return pyramid(), [torch.zeros(0, 4), GOOD]


def _case_p5_is_1x1():
    feats = pyramid(height=32, width=32)
    assert feats[-1].shape[-2:] == (1, 1)
    return feats, [
        torch.tensor([[0.0, 0.0, 32.0, 32.0], [4.0, 4.0, 9.0, 30.0], [-8.0, -8.0, 40.0, 40.0]]),
        torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 300.0, 300.0]]),
    ]


def _case_non_contiguous():
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 8, 128 // s, 2 * 96 // s, generator=g)[:, ::2, :, ::2] for s in (4, 8, 16, 32)]
    assert not any(f.is_contiguous() for f in feats)
    return feats, [GOOD, GOOD[:1]]


def _case_channels_last():
    feats = [f.to(memory_format=torch.channels_last) for f in pyramid()]
    return feats, [GOOD, GOOD.flip(0)]


def _case_float64_features():
    return pyramid(dtype=torch.float64), [GOOD, GOOD[1:]]


def _case_float64_boxes():
    return pyramid(), [GOOD.double(), GOOD[:2].double()]


def _case_integer_boxes():
    return pyramid(), [GOOD.round().long(), GOOD[:1].round().int()]


def _case_half_boxes():
    return pyramid(), [GOOD.half(), GOOD.half()]


CORRECT = {
    "zero_area": _case_zero_area,
    "outside_image": _case_outside_image,
    "larger_than_image": _case_larger_than_image,
    "at_border": _case_border,
    "empty_in_one_image": _case_empty_in_one_image,
    "p5_is_1x1": _case_p5_is_1x1,
    "non_contiguous_features": _case_non_contiguous,
    "channels_last_features": _case_channels_last,
    "float64_features": _case_float64_features,
    "float64_boxes": _case_float64_boxes,
    "integer_boxes": _case_integer_boxes,
    "half_boxes": _case_half_boxes,
}


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
@pytest.mark.parametrize("case", sorted(CORRECT))
def test_correct_output(case, pooler_type, sampler):
    feats, boxes = CORRECT[case]()
    pooler = ROIAlignPooler(7, SCALES, 0, pooler_type, sampler=sampler)
    out = pooler(feats, boxes)
    ref = roipooler_reference(feats, [b.float() for b in boxes], pooler_type)
    assert out.dtype == feats[0].dtype and out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


def test_empty_in_all_images():
    feats = pyramid()
    for sampler in SAMPLERS:
        out = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2", sampler=sampler)(feats, [torch.zeros(0, 4)] * 2)
        ref = roipooler_reference(feats, [torch.zeros(0, 4)] * 2, "ROIAlignV2")
        assert out.shape == ref.shape == (0, 8, 7, 7) and out.dtype == ref.dtype


def _bad(feats=None, boxes=None):
    return (pyramid() if feats is None else feats), ([GOOD, GOOD] if boxes is None else boxes)


NAN = torch.tensor([[1.0, 2.0, float("nan"), 4.0]])
INF = torch.tensor([[1.0, float("-inf"), 3.0, 4.0]])
ERRORS = {
    "inverted_x": (
        lambda: _bad(boxes=[GOOD, torch.tensor([[50.0, 10.0, 20.0, 30.0]])]),
        ValueError,
        "inverted",
    ),
    "inverted_y": (
        lambda: _bad(boxes=[torch.tensor([[5.0, 30.0, 20.0, 29.0]]), GOOD]),
        ValueError,
        "inverted",
    ),
    "nan_coordinates": (lambda: _bad(boxes=[GOOD, torch.cat([GOOD, NAN])]), ValueError, "non-finite"),
    "inf_coordinates": (lambda: _bad(boxes=[torch.cat([INF, GOOD]), GOOD]), ValueError, "non-finite"),
    "fewer_box_lists_than_images": (
        lambda: _bad(boxes=[GOOD]),
        ValueError,
        "boxes for 1 images.*batch size 2",
    ),
    "more_box_lists_than_images": (
        lambda: _bad(boxes=[GOOD] * 3),
        ValueError,
        "boxes for 3 images.*batch size 2",
    ),
    "boxes_on_other_device": (lambda: _bad(boxes=[GOOD, GOOD.to("meta")]), ValueError, "on meta"),
    "boxes_not_nx4": (lambda: _bad(boxes=[GOOD, GOOD[:, :3]]), ValueError, "Nx4"),
    "boxes_not_a_list": (lambda: _bad(boxes=GOOD), TypeError, "list"),
    "too_few_feature_maps": (lambda: _bad(feats=pyramid()[:3]), ValueError, "3 feature maps.*4"),
    "too_many_feature_maps": (
        lambda: _bad(feats=pyramid() + [torch.zeros(2, 8, 2, 2)]),
        ValueError,
        "5 feature maps",
    ),
    "integer_features": (
        lambda: _bad(feats=[f.to(torch.int32) for f in pyramid()]),
        TypeError,
        "floating dtype",
    ),
    "mixed_feature_dtypes": (
        lambda: _bad(feats=pyramid()[:3] + [pyramid()[3].double()]),
        ValueError,
        "dtype",
    ),
    "features_not_4d": (lambda: _bad(feats=[f[0] for f in pyramid()]), ValueError, "4-D"),
    "features_wrong_sizes": (lambda: _bad(feats=pyramid()[:2] + pyramid()[:2]), ValueError, "halve"),
}


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("case", sorted(ERRORS))
def test_clear_error(case, sampler):
    make, error, match = ERRORS[case]
    feats, boxes = make()
    with pytest.raises(error, match=match):
        ROIAlignPooler(7, SCALES, 0, "ROIAlignV2", sampler=sampler)(feats, boxes)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(
    "rois, match",
    [
        (torch.tensor([[0.0, 1, 2, 30, 40], [2, 1, 2, 30, 40]]), r"rois\[1, 0\] = 2.0 is not the index of an image"),
        (torch.tensor([[0.5, 1, 2, 30, 40]]), r"rois\[0, 0\] = 0.5 is not the index"),
        (torch.tensor([[-1.0, 1, 2, 30, 40]]), r"rois\[0, 0\] = -1.0"),
        (torch.tensor([[0.0, 1, 2, 30, 40], [1, 1, 2, 30, 40], [1, 9, 2, 3, 40]]), r"image 1 are inverted.*box 1:"),
        (torch.tensor([[1.0, 2, 30, 40]]), r"rois must be \(K, 5\)"),
    ],
)
def test_rois_checked_inside_the_operator(sampler, rois, match):
    """The (K, 5) entry (``pool_rois``, the export wrappers, ``torch.ops.roi_plugin.*``) checks
    the image index and the boxes inside the operator; the box index is within its image."""
    pooler = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2", sampler=sampler)
    with pytest.raises(ValueError, match=match):
        pooler.pool_rois(pyramid(), rois)


# --------------------------------------------------------------------- level boundaries
def boundary_boxes():
    """Square boxes whose side is within 1e-4 px of a level boundary (224 * 2^k), at offsets
    that stress float32 rounding of the area."""
    out = []
    for side in (56.0, 112.0, 224.0, 448.0):
        for d in (-1e-4, -3e-5, -1e-5, 0.0, 1e-5, 3e-5, 1e-4):
            for x0 in (0.0, 13.37, 1000.5):
                out.append([x0, x0 / 2, x0 + side + d, x0 / 2 + side + d])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_level_boundary_same_as_detectron2(dtype):
    """Boxes of either dtype on float32 maps. (Detectron2's ``Boxes`` holds float32, so its
    rule always runs on float32 coordinates; so does the pooler for float32/half maps.)"""
    boxes = boundary_boxes().to(dtype)
    ref = d2_assign_boxes_to_levels([Boxes(boxes)], 2, 5, 224, 4)
    ours = assign_boxes_to_levels(boxes.float(), 2, 5, 224, 4)
    assert torch.equal(ours, ref)
    assert (
        ref.bincount().tolist()
        != d2_assign_boxes_to_levels([Boxes(boxes.round())], 2, 5, 224, 4).bincount().tolist()
    )
    # and the pooler routes them the same way: its output equals ROIPooler's
    feats = pyramid(batch=1, height=1536, width=1536, channels=2)
    for sampler in SAMPLERS:
        out = ROIAlignPooler(7, SCALES, 2, "ROIAlignV2", sampler=sampler)(feats, [boxes])
        torch.testing.assert_close(
            out, roipooler_reference(feats, [boxes], "ROIAlignV2", 2).to(out.dtype), atol=TOL, rtol=0
        )


# --------------------------------------------------------------------- huge boxes
def _peak_cpu_bytes(fn):
    """Peak of live CPU memory allocated by torch while ``fn`` runs (profiler memory events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
def test_huge_boxes(sampler, pooler_type):
    """1e6..1e9 px boxes under adaptive sampling: finite output, no more memory than a few
    times an image-sized box. (torchvision's kernel would loop over ~(1e9/32/7)^2 samples per
    bin; it is compared where it can run, at 1e4 px.)"""
    feats = pyramid(batch=2, height=256, width=256, channels=4)
    pooler = ROIAlignPooler(7, SCALES, 0, pooler_type, sampler=sampler)

    def boxes(s):
        return [torch.tensor([[-s, -s / 2, s + 256, s + 256]]), torch.tensor([[-s, -s, s + 256, s + 256]])]

    ref_box = boxes(1e4)
    out = pooler(feats, ref_box)
    aligned = pooler_type == "ROIAlignV2"
    for i, b in enumerate(ref_box):  # all on P5 (index 3)
        torch.testing.assert_close(
            out[i : i + 1], roi_align(feats[3][i : i + 1], [b], 7, 1 / 32, 0, aligned), atol=TOL, rtol=0
        )
    normal = _peak_cpu_bytes(lambda: pooler(feats, boxes(0.0)))
    for s in (1e6, 1e7, 1e8, 1e9):
        out = pooler(feats, boxes(s))
        assert out.shape == (2, 4, 7, 7) and bool(torch.isfinite(out).all())
        peak = _peak_cpu_bytes(lambda: pooler(feats, boxes(s)))
        assert peak <= 4 * normal, f"{s:g} px box: peak {peak} B vs {normal} B for an image-sized box"


# --------------------------------------------------------------------- the heads


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("objects", [(0, 0), (0, 2)], ids=["no_annotations", "mixed_batch"])
def test_training_without_annotations(sampler, objects):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(sampler)).train()
    batch = [annotated_image(64, 96, n, seed=i) for i, n in enumerate(objects)]
    with EventStorage():
        losses = model(batch)
    assert all(bool(torch.isfinite(v)) for v in losses.values()), losses
    if objects == (0, 0):
        # no foreground anywhere: box and mask losses are exactly 0, and still in the graph
        for key in ("loss_box_reg", "loss_mask", "loss_rpn_loc"):
            assert losses[key].item() == 0.0 and losses[key].requires_grad, key
    sum(losses.values()).backward()
    heads = model.roi_heads
    for p in (
        heads.box_predictor.bbox_pred.weight,
        heads.mask_head.predictor.weight,
        heads.box_head.fc1.weight,
    ):
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())
    if objects == (0, 0):
        assert heads.box_predictor.bbox_pred.weight.grad.abs().max() == 0
        assert heads.box_head.fc1.weight.grad.abs().max() > 0  # the classification loss still trains


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_features(sampler, bad):
    """NaN/inf in the maps: the pooler does not crash, untouched ROIs stay exact, and the heads
    return zero detections instead of non-finite boxes."""
    feats = pyramid(channels=16)
    value = float(bad)
    for f in feats:
        f[0, :, :2, :2] = value  # top-left corner of image 0 on every level
    boxes = [torch.tensor([[0.0, 0.0, 40.0, 40.0], [60.0, 80.0, 90.0, 120.0]]), GOOD]
    pooler = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2", sampler=sampler)
    out = pooler(feats, boxes)
    assert out.shape == (5, 16, 7, 7)
    assert not bool(torch.isfinite(out[0]).all())  # the ROI over the corner sees it
    torch.testing.assert_close(out[1:], roipooler_reference(feats, boxes, "ROIAlignV2")[1:], atol=TOL, rtol=0)

    torch.manual_seed(0)
    model = build_model(tiny_cfg(sampler)).eval()
    names = ["p2", "p3", "p4", "p5", "p6"]
    feats = {k: torch.full((1, 16, 128 // 2**i, 96 // 2**i), value) for i, k in enumerate(names, 2)}
    proposals = Instances((128, 96))
    proposals.proposal_boxes = Boxes(torch.cat([GOOD, boxes[0]]))
    proposals.objectness_logits = torch.zeros(5)
    with torch.no_grad():
        instances, _ = model.roi_heads(None, feats, [proposals])
    assert len(instances) == 1 and len(instances[0]) == 0
    assert instances[0].pred_masks.shape[0] == 0


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_model_on_images_where_p5_is_1x1(sampler):
    """Train and infer on 24x20 and 30x32 images (padded to 32: P5 is 1x1, P6 1x1)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(sampler))
    batch = [annotated_image(24, 20, 1, seed=0), annotated_image(30, 32, 0, seed=1)]
    with EventStorage():
        losses = model.train()(batch)
    assert all(bool(torch.isfinite(v)) for v in losses.values()), losses
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        assert features["p5"].shape[-2:] == (1, 1)
        proposals, _ = model.proposal_generator(images, features)
        maps = [features[k] for k in model.roi_heads.box_in_features]
        boxes = [p.proposal_boxes.tensor for p in proposals]
        torch.testing.assert_close(
            model.roi_heads.box_pooler(maps, boxes), roipooler_reference(maps, boxes, "ROIAlignV2"), atol=TOL, rtol=0
        )
        results = model([{"image": x["image"]} for x in batch])
    for r, x in zip(results, batch):
        inst = r["instances"]
        assert bool(torch.isfinite(inst.pred_boxes.tensor).all())
        assert inst.pred_masks.shape[1:] == (x["height"], x["width"])
