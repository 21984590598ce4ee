"""The float64 ROIAlignRotated reference (tests/rotated_reference.py) against references we did
not write: at angle 0 it must equal ``torchvision.ops.roi_align(aligned=True)`` on the same
axis-aligned box, and turning the feature map by 90 degrees (``torch.rot90``) together with
the box (centre moved, angle + 90) must leave the output unchanged. Detectron2's own tests of
the op run on it in test_d2_roi_align_rotated.py. Where Detectron2's compiled _C loads, the
reference must also equal the kernel it transcribes, run in float64.
"""
import pytest
import torch
from torchvision.ops import roi_align

from helpers import detectron2_compiled
from rotated_reference import roi_align_rotated_reference


def random_rois(n, size, seed, dtype=torch.float64):
    """(n, 6) rotated ROIs on a 2-image batch, some across the border or outside the image."""
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(n, 2, generator=g, dtype=dtype) * (size * 1.4) - size * 0.2
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * size * 0.8
    wh[0] = 0.0  # an empty box
    batch = torch.randint(0, 2, (n, 1), generator=g).to(dtype)
    ang = torch.rand(n, 1, generator=g, dtype=dtype) * 360 - 180
    return torch.cat([batch, ctr, wh, ang], 1)


@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
@pytest.mark.parametrize("scale,output_size", [(1.0, 7), (0.25, 7), (0.125, (3, 5))])
def test_angle_zero_equals_torchvision_roi_align(sampling_ratio, scale, output_size):
    size = 64  # input-image pixels; the map is size * scale wide
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 3, int(size * scale) + 3, int(size * scale) + 1, generator=g, dtype=torch.float64)
    rois = random_rois(12, size, seed=2)
    rois[:, 5] = 0.0
    xyxy = torch.stack([rois[:, 0], rois[:, 1] - rois[:, 3] / 2, rois[:, 2] - rois[:, 4] / 2,
                        rois[:, 1] + rois[:, 3] / 2, rois[:, 2] + rois[:, 4] / 2], 1)
    ours = roi_align_rotated_reference(feat, rois, output_size, scale, sampling_ratio)
    ref = roi_align(feat, xyxy, output_size, scale, sampling_ratio, aligned=True)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)  # torchvision's kernel in float64


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_rot90_of_the_map(k, sampling_ratio):
    """torch.rot90(map, k, (-2, -1)) turns the image 90 degrees counter-clockwise on screen
    k times: pixel centre (x, y) goes to (y, W - x). The box's centre moves the same way and
    its angle grows by 90 (counter-clockwise), so every sample lands on the same feature value."""
    scale = 0.5
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(2, 4, 20, 27, generator=g, dtype=torch.float64)
    rois = random_rois(10, 40, seed=4)
    ours = roi_align_rotated_reference(feat, rois, 7, scale, sampling_ratio)
    turned_feat, turned = feat, rois.clone()
    for _ in range(k):
        W = turned_feat.shape[-1] / scale  # width in input-image pixels
        turned_feat = torch.rot90(turned_feat, 1, (-2, -1))
        x, y = turned[:, 1].clone(), turned[:, 2].clone()
        turned[:, 1], turned[:, 2] = y, W - x
        turned[:, 5] += 90
    out = roi_align_rotated_reference(turned_feat, turned, 7, scale, sampling_ratio)
    assert ours.abs().sum() > 0
    torch.testing.assert_close(out, ours, atol=1e-9, rtol=0)


def test_negative_size_raises():
    with pytest.raises(ValueError, match="non-negative size"):
        roi_align_rotated_reference(torch.zeros(1, 1, 4, 4), torch.tensor([[0, 2, 2, -1, 1, 0.0]]), 2, 1.0, 0)


@pytest.mark.skipif(not detectron2_compiled(), reason="needs Detectron2's compiled _C (a build from source)")
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_equals_the_compiled_kernel(sampling_ratio):
    """The transcription against Detectron2's ROIAlignRotated CPU kernel itself (float64), values
    and input gradients."""
    from detectron2.layers import ROIAlignRotated

    g = torch.Generator().manual_seed(5)
    feat = torch.randn(2, 3, 20, 27, generator=g, dtype=torch.float64, requires_grad=True)
    rois = random_rois(16, 40, seed=6)
    grad = torch.randn(16, 3, 7, 7, generator=g, dtype=torch.float64)
    ref = roi_align_rotated_reference(feat, rois, 7, 0.5, sampling_ratio)
    (ref_grad,) = torch.autograd.grad(ref, feat, grad)
    out = ROIAlignRotated((7, 7), 0.5, sampling_ratio)(feat, rois)
    (out_grad,) = torch.autograd.grad(out, feat, grad)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(out_grad, ref_grad, atol=1e-12, rtol=0)
