"""Issue 10.5: the pooler returns contiguous NCHW like ROIPooler, so heads may ``.view()`` what
their convs make of it (keypoint R-CNN's loss did, and the grid_sample sampler crashed)."""
import pytest
import torch
from torch import nn

from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.keypoint_head import keypoint_rcnn_loss
from detectron2.structures import Boxes, Instances, Keypoints

from roi_plugin import SAMPLERS, ROIAlignPooler


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_output_is_contiguous_nchw_and_keypoint_loss_runs(sampler):
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 8, 64 // 2**i, 64 // 2**i, generator=g, requires_grad=True) for i in range(4)]
    boxes = [Boxes(torch.tensor([[4.0, 6.0, 90.0, 80.0], [30.0, 20.0, 60.0, 70.0]])),
             Boxes(torch.tensor([[10.0, 10.0, 200.0, 150.0]]))]
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    ours = ROIAlignPooler(14, scales, 0, "ROIAlignV2", sampler=sampler)(feats, boxes)
    ref = ROIPooler(14, scales, 0, "ROIAlignV2")(feats, boxes)
    assert ours.is_contiguous() and ref.is_contiguous()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    # The keypoint head's path: conv + deconv, then keypoint_rcnn_loss views (N*K, H*W).
    head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ConvTranspose2d(8, 17, 4, 2, 1))
    logits = head(ours)
    inst = []
    for b in boxes:
        i = Instances((256, 256))
        i.proposal_boxes = b
        t = torch.rand(len(b), 17, 2, generator=g)
        xy = b.tensor[:, None, :2] + t * (b.tensor[:, None, 2:] - b.tensor[:, None, :2])
        i.gt_keypoints = Keypoints(torch.cat([xy, torch.full((len(b), 17, 1), 2.0)], 2))
        inst.append(i)
    loss = keypoint_rcnn_loss(logits, inst, normalizer=None)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(f.grad is not None for f in feats[:2])
