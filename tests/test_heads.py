"""Box head, predictor and ROI heads, against Detectron2's FastRCNNConvFCHead / StandardROIHeads."""
import glob
import os

import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import (
    ROI_BOX_HEAD_REGISTRY,
    ROI_HEADS_REGISTRY,
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    StandardROIHeads,
    build_roi_heads,
)
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import roi_plugin
from roi_plugin import (
    FastRCNNPredictor,
    GridSampleROIHeads,
    PluginROIHeads,
    ROIAlignPooler,
    TwoMLPHead,
)

from helpers import REPO, shipped_cfg

# configs/rotated/ (rotated boxes, no masks, a different inference output) is tested in
# tests/test_rotated_heads.py
CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    if os.path.relpath(p, os.path.join(REPO, "configs")).split(os.sep)[0] != "rotated"
)


def plugin_cfg(name="PluginROIHeads", sampler="gather", mask=True):
    cfg = shipped_cfg("mask_rcnn_R_50_FPN_1x_plugin.yaml")
    cfg.MODEL.MASK_ON = mask
    cfg.MODEL.ROI_HEADS.NAME = name
    cfg.MODEL.ROI_PLUGIN.SAMPLER = sampler
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    return cfg


def test_registries():
    assert ROI_HEADS_REGISTRY.get("PluginROIHeads") is PluginROIHeads
    assert ROI_HEADS_REGISTRY.get("GridSampleROIHeads") is GridSampleROIHeads
    assert ROI_BOX_HEAD_REGISTRY.get("TwoMLPHead") is TwoMLPHead
    assert issubclass(PluginROIHeads, StandardROIHeads)
    assert issubclass(FastRCNNPredictor, FastRCNNOutputLayers)


def test_two_mlp_head_equals_detectron2_conv_fc_head():
    cfg = plugin_cfg()
    shape = ShapeSpec(channels=256, height=7, width=7)
    ours = TwoMLPHead(cfg, shape)
    assert [n for n, _ in ours.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert ours.fc1.weight.shape == (1024, 256 * 7 * 7) and ours.fc2.weight.shape == (1024, 1024)
    assert ours.output_shape.channels == 1024
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    ref = FastRCNNConvFCHead(cfg, shape)
    missing = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(10, 256, 7, 7)
    torch.testing.assert_close(ours(x), ref(x))
    # non-contiguous (channels-last) input flattens in (C, H, W) order too
    torch.testing.assert_close(ours(x.to(memory_format=torch.channels_last)), ref(x))


def test_two_mlp_head_fc_dim_and_bad_config():
    cfg = plugin_cfg()
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    head = TwoMLPHead(cfg, ShapeSpec(channels=8, height=7, width=7))
    assert head(torch.randn(3, 8, 7, 7)).shape == (3, 64)
    assert (head(torch.randn(3, 8, 7, 7)) >= 0).all()  # ReLU after fc2
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 3
    with pytest.raises(ValueError, match="NUM_FC"):
        TwoMLPHead(cfg, ShapeSpec(channels=8, height=7, width=7))


def test_predictor_init_and_class_layout():
    torch.manual_seed(0)
    cfg = plugin_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    pred = FastRCNNPredictor(cfg, ShapeSpec(channels=1024))
    assert pred.cls_score.weight.shape == (81, 1024)  # 80 classes + background (last)
    assert pred.bbox_pred.weight.shape == (80 * 4, 1024)
    assert pred.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert pred.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.02)
    assert pred.cls_score.weight.mean().abs().item() < 1e-3
    assert torch.count_nonzero(pred.cls_score.bias) == 0 and torch.count_nonzero(pred.bbox_pred.bias) == 0
    cfg.MODEL.ROI_PLUGIN.CLS_SCORE_INIT_STD = 0.05
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    pred = FastRCNNPredictor(cfg, ShapeSpec(channels=1024))
    assert pred.cls_score.weight.std().item() == pytest.approx(0.05, rel=0.02)
    assert pred.bbox_pred.weight.shape == (4, 1024)
    # Detectron2's knobs are honoured, not re-implemented
    assert pred.test_topk_per_image == cfg.TEST.DETECTIONS_PER_IMAGE
    assert pred.test_score_thresh == cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST


@pytest.mark.parametrize("name,sampler", [("PluginROIHeads", "gather"), ("PluginROIHeads", "grid_sample"),
                                          ("GridSampleROIHeads", "gather")])
def test_roi_heads_wire_the_plugin(name, sampler):
    cfg = plugin_cfg(name, sampler)
    cfg.MODEL.KEYPOINT_ON = True
    cfg.MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION = 14
    shapes = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 7)}
    heads = build_roi_heads(cfg, shapes)
    assert type(heads).__name__ == name
    want = "grid_sample" if name == "GridSampleROIHeads" else sampler
    for pooler, res in ((heads.box_pooler, 7), (heads.mask_pooler, 14), (heads.keypoint_pooler, 14)):
        assert isinstance(pooler, ROIAlignPooler)
        assert pooler.output_size == (res, res) and pooler.sampler == want
        assert pooler.scales == (1 / 4, 1 / 8, 1 / 16, 1 / 32) and pooler.pooler_type == "ROIAlignV2"
    assert isinstance(heads.box_head, TwoMLPHead)
    assert isinstance(heads.box_predictor, FastRCNNPredictor)
    # any registered box head can be named
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    assert isinstance(build_roi_heads(cfg, shapes).box_head, FastRCNNConvFCHead)


def _heads_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [(448, 512), (384, 512)]
    feats = {f"p{i}": torch.randn(2, 256, 448 // 2**i, 512 // 2**i, generator=g) for i in range(2, 6)}
    proposals, targets = [], []
    for h, w in sizes:
        gt = Instances((h, w))
        xy = torch.rand(4, 2, generator=g) * torch.tensor([w / 2, h / 2])
        wh = 20 + torch.rand(4, 2, generator=g) * 300
        gt.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=torch.tensor([w, h]))], 1))
        gt.gt_classes = torch.randint(0, 5, (4,), generator=g)
        from detectron2.structures import BitMasks

        masks = torch.zeros(4, h, w, dtype=torch.bool)
        for k, b in enumerate(gt.gt_boxes.tensor.round().long()):
            masks[k, b[1] : b[3], b[0] : b[2]] = True
        gt.gt_masks = BitMasks(masks)
        targets.append(gt)
        p = Instances((h, w))
        jitter = gt.gt_boxes.tensor.repeat(20, 1) + torch.randn(80, 4, generator=g) * 8
        rnd_xy = torch.rand(100, 2, generator=g) * torch.tensor([w, h])
        rnd = torch.cat([rnd_xy, rnd_xy + 4 + torch.rand(100, 2, generator=g) * 500], 1)
        whole = torch.tensor([[0.0, 0.0, w, h], [10.0, 5.0, w - 3.0, h - 7.0]])  # P5-sized
        boxes = torch.cat([jitter, rnd, whole])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        p.proposal_boxes = Boxes(boxes)
        p.objectness_logits = torch.randn(len(boxes), generator=g)
        proposals.append(p)
    return feats, proposals, targets


def _twin_heads(name, sampler, box_head="FastRCNNConvFCHead"):
    """Detectron2's StandardROIHeads and the plugin's, same config otherwise, same weights."""
    torch.manual_seed(0)  # weight init
    shapes = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 7)}
    cfg = plugin_cfg(name, sampler)
    cfg.MODEL.ROI_BOX_HEAD.NAME = box_head
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512  # every proposal is sampled
    ours = build_roi_heads(cfg, shapes)
    cfg_ref = plugin_cfg("StandardROIHeads")
    cfg_ref.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg_ref.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
    ref = build_roi_heads(cfg_ref, shapes)
    assert type(ref) is StandardROIHeads and isinstance(ref.box_pooler, ROIPooler)
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return ours, ref


@pytest.mark.slow
@pytest.mark.parametrize("name,sampler,box_head", [
    ("PluginROIHeads", "gather", "TwoMLPHead"),
    ("GridSampleROIHeads", "grid_sample", "TwoMLPHead"),
    ("PluginROIHeads", "gather", "FastRCNNConvFCHead"),
])
def test_training_losses_and_gradients_equal_standard_roi_heads(name, sampler, box_head):
    """Pinned against Detectron2: same seed, same weights -> the same losses and gradients."""
    ours, ref = _twin_heads(name, sampler, box_head)
    feats, proposals, targets = _heads_inputs()
    losses, grads = [], []
    for heads in (ours, ref):
        heads.train()
        x = {k: v.clone().requires_grad_() for k, v in feats.items()}
        torch.manual_seed(42)  # proposal sampling draws from the global generator
        with EventStorage():
            _, loss = heads(None, x, [p for p in proposals], targets)
        sum(loss.values()).backward()
        losses.append(loss)
        grads.append({k: v.grad for k, v in x.items()} | {n: p.grad for n, p in heads.named_parameters()})
    assert set(losses[0]) == {"loss_cls", "loss_box_reg", "loss_mask"}
    for k in losses[1]:
        assert torch.isfinite(losses[0][k]) and losses[0][k] > 0
        torch.testing.assert_close(losses[0][k], losses[1][k], rtol=1e-5, atol=1e-5)
    # grid_sample's pooled features differ from ROIAlign's by ~1e-5 (float32 coordinate
    # normalisation), enough to flip a rare ReLU in the box head; gather's by ~1e-7.
    rel = 1e-4 if sampler == "gather" else 2e-2
    for k, g_ref in grads[1].items():
        # A level without ROIs gets no gradient from us (None) where ROIPooler builds zeros.
        g = torch.zeros_like(g_ref) if grads[0][k] is None else grads[0][k]
        assert (g - g_ref).abs().max() <= 1e-6 + rel * g_ref.abs().max(), k
    levels = [k for k in feats if grads[0][k] is not None and grads[0][k].abs().sum() > 0]
    assert levels == ["p2", "p3", "p4", "p5"]  # ROIs reached every level


@pytest.mark.slow
def test_inference_equals_standard_roi_heads():
    ours, ref = _twin_heads("PluginROIHeads", "gather", "TwoMLPHead")
    feats, proposals, _ = _heads_inputs(seed=1)
    with torch.no_grad():
        for heads in (ours, ref):
            # spread the scores so the ranking is well defined
            torch.nn.init.normal_(heads.box_predictor.cls_score.weight, std=0.5)
        ours.box_predictor.load_state_dict(ref.box_predictor.state_dict())
    outs = []
    for heads in (ours, ref):
        heads.eval()
        with torch.no_grad():
            inst, _ = heads(None, feats, proposals)
        outs.append(inst)
    for a, b in zip(*outs):
        assert len(a) == len(b) > 0
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=0, atol=1e-3)
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-3)
        assert torch.equal(a.pred_classes, b.pred_classes)
        torch.testing.assert_close(a.pred_masks, b.pred_masks, rtol=0, atol=1e-3)


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, REPO) for p in CONFIGS])
def test_every_config_loads_and_builds(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # loadable from any working directory
    cfg = shipped_cfg(path)
    model = build_model(cfg)
    heads = model.roi_heads
    if cfg.MODEL.ROI_HEADS.NAME in ("PluginROIHeads", "GridSampleROIHeads"):
        assert isinstance(heads.box_pooler, ROIAlignPooler)
        assert heads.box_pooler.output_size == (cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION,) * 2
        assert isinstance(heads.box_predictor, FastRCNNPredictor)
        if cfg.MODEL.MASK_ON:
            assert isinstance(heads.mask_pooler, ROIAlignPooler)
            assert heads.mask_pooler.output_size == (14, 14)
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 96, 128) * 255, "height": 96, "width": 128}])
    assert out[0]["instances"].image_size == (96, 128)


def test_package_exports():
    for name in roi_plugin.__all__:
        assert hasattr(roi_plugin, name), name
