# Ported from Detectron2 (Copyright (c) Facebook, Inc. and its affiliates; Apache License 2.0):
# tests/layers/test_roi_align.py and tests/modeling/test_roi_pooler.py.
"""Detectron2's own tests for ``ROIAlign`` and ``ROIPooler``, run against :class:`ROIAlignPooler`.

A drop-in passes the host framework's tests for what it replaces. Changes from upstream: the
op under test is ``ROIAlignPooler`` (one level at scale 1.0 stands in for the ``ROIAlign``
layer, called with one box list instead of a ``(K, 5)`` tensor; in the ROIAlignV2-vs-ROIAlignRotated
test both poolers are ``ROIAlignPooler``), every test runs with both
samplers, CUDA branches and the benchmark are dropped, pytest instead of unittest, and
random inputs are seeded. Assertions and tolerances are upstream's. The ``ROIPooler`` tests
(scriptability, no images, tracing) also run with ``pooler_type="ROIPool"`` (issue 29: Detectron2
has no ROIPool test of its own; its ``ROIPool`` is torchvision's ``roi_pool``), the scripted
pooler then also compared with Detectron2's ``ROIPooler(pooler_type="ROIPool")``.
"""
import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes, RotatedBoxes
from detectron2.utils.testing import random_boxes

from roi_plugin import SAMPLERS, ROIAlignPooler


@pytest.fixture(params=SAMPLERS)
def sampler(request):
    torch.manual_seed(0)
    np.random.seed(0)
    return request.param


# ---------------------------------------------------------------- tests/layers/test_roi_align.py
def _simple_roialign(img, box, resolution, sampler, sampling_ratio=0, aligned=True, grad=False):
    """RoiAlign with scale 1.0 (upstream's helper, on the plugin's pooler)."""
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    op = ROIAlignPooler(resolution, (1.0,), sampling_ratio, "ROIAlignV2" if aligned else "ROIAlign",
                        sampler=sampler)
    input = torch.from_numpy(img[None, None, :, :].astype("float32")).requires_grad_(grad)
    rois = torch.from_numpy(np.asarray(box)[None, :].astype("float32"))
    output = op([input], [Boxes(rois)])
    return (input, output) if grad else output[0, 0]


def test_forward_output(sampler):
    input = np.arange(25).reshape(5, 5).astype("float32")
    output = _simple_roialign(input, [1, 1, 3, 3], (4, 4), sampler, aligned=False)
    output_correct = _simple_roialign(input, [1, 1, 3, 3], (4, 4), sampler, aligned=True)
    old_results = [[7.5, 8, 8.5, 9], [10, 10.5, 11, 11.5], [12.5, 13, 13.5, 14], [15, 15.5, 16, 16.5]]
    correct_results = [
        [4.5, 5.0, 5.5, 6.0], [7.0, 7.5, 8.0, 8.5], [9.5, 10.0, 10.5, 11.0], [12.0, 12.5, 13.0, 13.5]
    ]
    assert np.allclose(output.flatten(), np.asarray(old_results).flatten())
    assert np.allclose(output_correct.flatten(), np.asarray(correct_results).flatten())


def test_resize(sampler):
    H, W = 30, 30
    input = np.random.rand(H, W).astype("float32") * 100
    box = [10, 10, 20, 20]
    output = _simple_roialign(input, box, (5, 5), sampler, aligned=True)
    input2x = cv2.resize(input, (W // 2, H // 2), interpolation=cv2.INTER_LINEAR)
    box2x = [x / 2 for x in box]
    output2x = _simple_roialign(input2x, box2x, (5, 5), sampler, aligned=True)
    diff = np.abs((output2x - output).detach().numpy())
    assert diff.max() < 1e-4


def _grid_sample_roi_align(input, boxes, output_size, scale, sampling_ratio):
    # upstream's PointRend-based reference; unlike true roi_align, one image only
    from detectron2.projects.point_rend.point_features import (
        generate_regular_grid_point_coords,
        get_point_coords_wrt_image,
        point_sample,
    )

    N, _, H, W = input.shape
    R = len(boxes)
    assert N == 1
    boxes = boxes * scale
    grid = generate_regular_grid_point_coords(R, output_size * sampling_ratio, device=boxes.device)
    coords = get_point_coords_wrt_image(boxes, grid)
    coords = coords / torch.as_tensor([W, H], device=coords.device)  # R, s^2, 2
    res = point_sample(input, coords.unsqueeze(0), align_corners=False)  # 1,C, R,s^2
    res = (
        res.squeeze(0)
        .permute(1, 0, 2)
        .reshape(R, -1, output_size * sampling_ratio, output_size * sampling_ratio)
    )
    return F.avg_pool2d(res, sampling_ratio)


def test_grid_sample_equivalence(sampler):
    H, W = 30, 30
    input = np.random.rand(H, W).astype("float32") * 100
    box = [10, 10, 20, 20]
    for ratio in [1, 2, 3]:
        output = _simple_roialign(input, box, (5, 5), sampler, sampling_ratio=ratio)
        output_grid_sample = _grid_sample_roi_align(
            torch.from_numpy(input[None, None, :, :]).float(), torch.as_tensor(box).float()[None, :], 5, 1.0, ratio
        )
        assert torch.allclose(output, output_grid_sample)


def test_empty_box(sampler):
    img = np.random.rand(5, 5)
    box = [3, 4, 5, 4]
    o = _simple_roialign(img, box, 7, sampler)
    assert o.shape == (7, 7)
    assert (o == 0).all()
    input, output = _simple_roialign(img, box, 7, sampler, grad=True)
    output.sum().backward()
    grad = torch.zeros_like(input) if input.grad is None else input.grad  # None: not in the graph
    assert torch.allclose(grad, torch.zeros_like(input))


def test_empty_batch(sampler):
    input = torch.zeros(0, 3, 10, 10, dtype=torch.float32)
    op = ROIAlignPooler((7, 7), (1.0,), 0, "ROIAlignV2", sampler=sampler)
    output = op([input], [])
    assert output.shape == (0, 3, 7, 7)


# ---------------------------------------------------------------- tests/modeling/test_roi_pooler.py
@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIPool"])
def test_scriptability(sampler, pooler_type):
    # upstream's _test_scriptability (CPU): the scripted pooler's output torch.equal to eager
    pooler_resolution = 14
    canonical_level = 4
    canonical_scale_factor = 2**canonical_level
    pooler_scales = (1.0 / canonical_scale_factor,)
    sampling_ratio = 0

    N, C, H, W = 2, 4, 10, 8
    N_rois = 10
    std = 11
    mean = 0
    feature = (torch.rand(N, C, H, W) - 0.5) * 2 * std + mean

    features = [feature]

    rois = []
    for _ in range(N):
        boxes = random_boxes(N_rois, W * canonical_scale_factor)

        rois.append(Boxes(boxes))

    roialignv2_pooler = ROIAlignPooler(
        output_size=pooler_resolution,
        scales=pooler_scales,
        sampling_ratio=sampling_ratio,
        pooler_type=pooler_type,
        sampler=sampler,
    )

    roialignv2_out = roialignv2_pooler(features, rois)
    scripted_roialignv2_out = torch.jit.script(roialignv2_pooler)(features, rois)
    assert torch.equal(roialignv2_out, scripted_roialignv2_out)
    if pooler_type == "ROIPool":
        assert torch.equal(roialignv2_out, ROIPooler(pooler_resolution, pooler_scales, 0, "ROIPool")(features, rois))


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIPool"])
def test_no_images(sampler, pooler_type):
    N, C, H, W = 0, 32, 32, 32
    features = [torch.rand(N, C, H, W) - 0.5]
    pooler = ROIAlignPooler(output_size=14, scales=(1.0,), sampling_ratio=0.0, pooler_type=pooler_type,
                            sampler=sampler)
    output = pooler.forward(features, [])
    assert output.shape == (0, C, 14, 14)


@pytest.mark.parametrize("pooler_type", ["ROIAlign", "ROIPool"])
def test_roi_pooler_tracing(sampler, pooler_type):
    class Model(torch.nn.Module):
        def __init__(self, roi):
            super().__init__()
            self.roi = roi

        def forward(self, x, boxes):
            return self.roi(x, [Boxes(boxes)])

    canonical_scale_factor = 2**4
    pooler_scales = (1.0 / canonical_scale_factor, 0.5 / canonical_scale_factor)
    N, C, H, W = 1, 4, 10, 8
    feature = (torch.rand(N, C, H, W) - 0.5) * 2 * 11
    feature = [feature, feature]  # upstream passes the same map for both levels
    rois = random_boxes(10, W * canonical_scale_factor)
    # One larger box so that this level has only one box (pytorch/pytorch#49852).
    rois = torch.cat([rois, torch.tensor([[0, 0, 448, 448]])])
    model = Model(ROIAlignPooler(14, pooler_scales, 0, pooler_type, sampler=sampler))
    with torch.no_grad():
        func = torch.jit.trace(model, (feature, rois))
        o = func(feature, rois)
        assert o.shape == (11, 4, 14, 14)
        o = func(feature, rois[:5])
        assert o.shape == (5, 4, 14, 14)
        o = func(feature, random_boxes(20, W * canonical_scale_factor))
        assert o.shape == (20, 4, 14, 14)


def test_roialignv2_roialignrotated_match(sampler):
    # upstream's _test_roialignv2_roialignrotated_match (CPU), both poolers being ROIAlignPooler
    pooler_resolution = 14
    canonical_level = 4
    canonical_scale_factor = 2**canonical_level
    pooler_scales = (1.0 / canonical_scale_factor,)
    sampling_ratio = 0

    N, C, H, W = 2, 4, 10, 8
    N_rois = 10
    std = 11
    mean = 0
    feature = (torch.rand(N, C, H, W) - 0.5) * 2 * std + mean

    features = [feature]

    rois = []
    rois_rotated = []
    for _ in range(N):
        boxes = random_boxes(N_rois, W * canonical_scale_factor)
        rotated_boxes = torch.zeros(N_rois, 5)
        rotated_boxes[:, 0] = (boxes[:, 0] + boxes[:, 2]) / 2.0
        rotated_boxes[:, 1] = (boxes[:, 1] + boxes[:, 3]) / 2.0
        rotated_boxes[:, 2] = boxes[:, 2] - boxes[:, 0]
        rotated_boxes[:, 3] = boxes[:, 3] - boxes[:, 1]
        rois.append(Boxes(boxes))
        rois_rotated.append(RotatedBoxes(rotated_boxes))

    roialignv2_pooler = ROIAlignPooler(
        output_size=pooler_resolution,
        scales=pooler_scales,
        sampling_ratio=sampling_ratio,
        pooler_type="ROIAlignV2",
        sampler=sampler,
    )

    roialignv2_out = roialignv2_pooler(features, rois)

    roialignrotated_pooler = ROIAlignPooler(
        output_size=pooler_resolution,
        scales=pooler_scales,
        sampling_ratio=sampling_ratio,
        pooler_type="ROIAlignRotated",
        sampler=sampler,
    )

    roialignrotated_out = roialignrotated_pooler(features, rois_rotated)

    assert torch.allclose(roialignv2_out, roialignrotated_out, atol=1e-4)
