"""Property tests (hypothesis): for random boxes, image sizes, output sizes, sampling ratios and
both alignment modes, the pooler equals ``torchvision.ops.roi_align`` on the level that
Detectron2's rule picks, ROI by ROI. The static (export) path is held to the same reference.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roi_plugin import SAMPLERS, ROIAlignPooler
from roi_plugin.export.branches import boxes_to_rois

from helpers import SCALES, TOL, torchvision_reference

SETTINGS = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def pooling_problems(draw):
    """(features, box lists, output size, sampling ratio, aligned)."""
    height = draw(st.integers(8, 160))
    width = draw(st.integers(8, 160))
    batch = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    feats = [
        torch.randn(batch, 3, max(1, height // s), max(1, width // s), generator=g) for s in (4, 8, 16, 32)
    ]
    coord = st.floats(-0.5, 1.5, allow_nan=False, width=32)
    extent = st.one_of(st.just(0.0), st.floats(0.0, 2.5, allow_nan=False, width=32))
    box_lists = []
    for _ in range(batch):
        n = draw(st.integers(0, 6))
        boxes = []
        for _ in range(n):
            x0, y0 = draw(coord) * width, draw(coord) * height
            boxes.append([x0, y0, x0 + draw(extent) * width, y0 + draw(extent) * height])
        box_lists.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    output_size = draw(st.sampled_from([1, 2, 7, (3, 5), 14]))
    sampling_ratio = draw(st.integers(0, 3))
    aligned = draw(st.booleans())
    return feats, box_lists, output_size, sampling_ratio, aligned


@pytest.mark.parametrize("sampler", SAMPLERS)
@SETTINGS
@given(problem=pooling_problems())
def test_pooler_equals_torchvision_on_the_picked_level(sampler, problem):
    feats, box_lists, output_size, sampling_ratio, aligned = problem
    pooler = ROIAlignPooler(
        output_size, SCALES, sampling_ratio, "ROIAlignV2" if aligned else "ROIAlign", sampler=sampler
    )
    out = pooler(feats, box_lists)
    ref = torchvision_reference(feats, box_lists, output_size, sampling_ratio, aligned, dtype=torch.float32)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


@SETTINGS
@given(problem=pooling_problems())
def test_static_export_path_equals_torchvision(problem):
    feats, box_lists, output_size, sampling_ratio, aligned = problem
    # the export path needs a fixed layout: a fixed ratio here (adaptive is capped, see test_export)
    sampling_ratio = max(sampling_ratio, 1)
    pooler = ROIAlignPooler(output_size, SCALES, sampling_ratio, "ROIAlignV2" if aligned else "ROIAlign")
    rois = boxes_to_rois(box_lists)
    if len(rois) == 0:
        return
    out = pooler._grid_sample_static(feats, rois)
    ref = torchvision_reference(feats, box_lists, output_size, sampling_ratio, aligned, dtype=torch.float32)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)
