"""Rotated Faster R-CNN on CPU with a pure-Python detectron2: RRPN (with roi_plugin's rotated IoU
and NMS operators), ``RotatedFastRCNNPredictor`` against Detectron2's ``RotatedFastRCNNOutputLayers``,
and ``PluginRROIHeads`` built from configs/rotated/ (no ``ROIPooler`` left, a training step and
inference with both samplers).
"""
import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.rotated_fast_rcnn import RotatedFastRCNNOutputLayers
from detectron2.structures import Instances, RotatedBoxes
from detectron2.utils.events import EventStorage

from rotated_reference import reference_level_pooler

from roi_plugin import (
    SAMPLERS,
    PluginRROIHeads,
    ROIAlignPooler,
    RotatedFastRCNNPredictor,
)

from helpers import shipped_cfg


def rotated_cfg(leaf, *overrides):
    """A configs/rotated/ config shrunk for CPU tests."""
    return shipped_cfg(
        f"rotated/{leaf}",
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
        "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
        "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        *overrides,
    )


def rotated_batch(seed=0):
    """Two 64x96 images with rotated ground truth (one image without annotations)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, boxes in enumerate([[[30, 30, 30, 12, 30], [60, 20, 16, 16, -45], [20, 50, 40, 10, 90]], []]):
        inst = Instances((64, 96))
        inst.gt_boxes = RotatedBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5))
        inst.gt_classes = torch.arange(len(boxes), dtype=torch.int64) % 3
        image = (torch.rand(3, 64, 96, generator=g) * 255).round()
        out.append({"image": image, "instances": inst, "height": 64, "width": 96})
    return out


def train_step_and_infer(model):
    model.train()
    with EventStorage():
        losses = model(rotated_batch())
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    model.eval()
    with torch.no_grad():
        return losses, model(rotated_batch())


def assert_trains_and_infers(model):
    """One training step gives all four losses and a predictor gradient; inference gives
    finite rotated detections in every image."""
    losses, outputs = train_step_and_infer(model)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert model.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
    for out in outputs:
        det = out["instances"]
        assert isinstance(det.pred_boxes, RotatedBoxes) and len(det) > 0
        assert torch.isfinite(det.pred_boxes.tensor).all()


def test_rrpn_proposal_network_trains_and_infers_on_cpu():
    """RRPN alone (ProposalNetwork): anchor matching calls detectron2::box_iou_rotated and
    proposal selection detectron2::nms_rotated, which a pure-Python detectron2 lacks."""
    cfg = rotated_cfg("Base-RRCNN-FPN.yaml", "MODEL.META_ARCHITECTURE", "ProposalNetwork")
    torch.manual_seed(0)
    model = build_model(cfg)
    losses, outputs = train_step_and_infer(model)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"} and losses["loss_rpn_loc"] > 0
    grads = [p.grad for p in model.proposal_generator.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    for out in outputs:
        proposals = out["proposals"]
        assert isinstance(proposals.proposal_boxes, RotatedBoxes)
        assert 0 < len(proposals) <= 50 and torch.isfinite(proposals.proposal_boxes.tensor).all()


def test_rotated_predictor_is_detectron2_rotated_layers_with_plugin_init():
    cfg = rotated_cfg("rrcnn_R_18_FPN_plugin.yaml", "MODEL.ROI_PLUGIN.CLS_SCORE_INIT_STD", "0.05")
    torch.manual_seed(1)
    ours = RotatedFastRCNNPredictor(cfg, ShapeSpec(channels=256))
    theirs = RotatedFastRCNNOutputLayers(cfg, ShapeSpec(channels=256))
    assert type(ours.box2box_transform) is type(theirs.box2box_transform)
    assert ours.box2box_transform.weights == (10.0, 10.0, 5.0, 5.0, 1.0)
    assert ours.bbox_pred.out_features == 3 * 5 and ours.cls_score.out_features == 4
    # checkpoint-compatible: Detectron2's rotated predictor's weights load with no missing keys
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert abs(RotatedFastRCNNPredictor(cfg, ShapeSpec(channels=4096)).cls_score.weight.std() - 0.05) < 0.005
    # once weights are equal, losses and rotated inference are Detectron2's
    x = torch.randn(6, 256)
    proposals = Instances((64, 96))
    proposals.proposal_boxes = RotatedBoxes(torch.tensor([[30, 30, 30, 12, 30.0]]).repeat(6, 1))
    proposals.gt_boxes = RotatedBoxes(torch.tensor([[32, 29, 28, 13, 25.0]]).repeat(6, 1))
    proposals.gt_classes = torch.tensor([0, 1, 2, 3, 0, 3])
    preds_ours, preds_theirs = ours(x), theirs(x)
    with EventStorage():
        losses_ours = ours.losses(preds_ours, [proposals])
        losses_theirs = theirs.losses(preds_theirs, [proposals])
    assert losses_ours["loss_box_reg"] > 0
    for k in ("loss_cls", "loss_box_reg"):
        torch.testing.assert_close(losses_ours[k], losses_theirs[k])
    ours.test_score_thresh = theirs.test_score_thresh = 0.0
    (det_ours,), _ = ours.inference(preds_ours, [proposals])
    (det_theirs,), _ = theirs.inference(preds_theirs, [proposals])
    assert isinstance(det_ours.pred_boxes, RotatedBoxes) and len(det_ours) > 0
    torch.testing.assert_close(det_ours.pred_boxes.tensor, det_theirs.pred_boxes.tensor)


def test_builtin_rroi_heads_trains_and_infers_with_reference_pooler(tmp_path, monkeypatch):
    """The builtin twin: Detectron2's own RROIHeads, whose ROIPooler's ROIAlignRotated levels
    need _C. With the float64 reference in their place (in this model instance only), the rest
    (matching with box_iou_rotated, rotated losses, inference with batched rotated NMS, on top of
    RRPN) trains and infers on CPU."""
    monkeypatch.chdir(tmp_path)  # the config loads from any working directory
    torch.manual_seed(0)
    model = build_model(rotated_cfg("rrcnn_R_18_FPN_builtin.yaml"))
    assert type(model.roi_heads).__name__ == "RROIHeads"
    pooler = model.roi_heads.box_pooler
    assert isinstance(pooler, ROIPooler) and len(pooler.level_poolers) == 4
    for k, level in enumerate(pooler.level_poolers):
        pooler.level_poolers[k] = reference_level_pooler(level)
    model.roi_heads.box_predictor.test_score_thresh = 0.0
    assert_trains_and_infers(model)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_plugin_rroi_heads_trains_and_infers(sampler, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config loads from any working directory
    cfg = rotated_cfg("rrcnn_R_18_FPN_plugin.yaml", "MODEL.ROI_PLUGIN.SAMPLER", sampler)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model.roi_heads, PluginRROIHeads)
    assert not [m for m in model.modules() if isinstance(m, ROIPooler)]
    assert isinstance(model.roi_heads.box_pooler, ROIAlignPooler)
    assert model.roi_heads.box_pooler.sampler == sampler
    assert model.roi_heads.box_pooler.pooler_type == "ROIAlignRotated"
    model.roi_heads.box_predictor.test_score_thresh = 0.0
    assert isinstance(model.roi_heads.box_predictor, RotatedFastRCNNPredictor)
    assert_trains_and_infers(model)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_plugin_model_equals_builtin_model_with_reference_pooler(sampler, tmp_path, monkeypatch):
    """The whole rotated detector, plugin vs built-in twin (Detectron2's RROIHeads with the float64
    kernel transcription as its level poolers), same weights (loaded strictly): the training
    losses and the detections agree."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    builtin = build_model(rotated_cfg("rrcnn_R_18_FPN_builtin.yaml"))
    for k, level in enumerate(builtin.roi_heads.box_pooler.level_poolers):
        builtin.roi_heads.box_pooler.level_poolers[k] = reference_level_pooler(level)
    plugin = build_model(rotated_cfg("rrcnn_R_18_FPN_plugin.yaml", "MODEL.ROI_PLUGIN.SAMPLER", sampler))
    plugin.load_state_dict(builtin.state_dict(), strict=True)
    results = []
    for model in (builtin, plugin):
        model.roi_heads.box_predictor.test_score_thresh = 0.0
        model.train()
        torch.manual_seed(1)  # proposal sampling
        with EventStorage():
            losses = model(rotated_batch())
        model.eval()
        with torch.no_grad():
            results.append((losses, model(rotated_batch())))
    (losses_b, det_b), (losses_p, det_p) = results
    assert set(losses_b) == set(losses_p)
    for k in losses_b:
        torch.testing.assert_close(losses_p[k], losses_b[k], rtol=1e-4, atol=1e-6)
    for out_b, out_p in zip(det_b, det_p):
        b, p = out_b["instances"], out_p["instances"]
        assert len(b) > 0 and len(p) == len(b)
        torch.testing.assert_close(p.scores, b.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(p.pred_boxes.tensor, b.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
