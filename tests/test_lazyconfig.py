"""LazyConfig (issue 10.4, 15.3): keyword construction of the plugin's modules and heads, the
shipped .py configs, and the LazyConfig trainer on the shapes dataset."""
import copy
import os

import pytest
import torch

from detectron2 import model_zoo
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, ImageList, Instances

import roi_plugin
from roi_plugin import (
    FastRCNNPredictor, GridSampleROIHeads, PluginCascadeROIHeads, PluginRes5ROIHeads, PluginROIHeads,
    ROIAlignPooler,
)
from checking import compare_outputs, leftover_builtin_modules
from helpers import REPO


def _inputs(in_features, strides, channels=256, seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    h, w = 192, 256
    feats = {f: torch.randn(2, channels, h // s, w // s, generator=g) for f, s in zip(in_features, strides)}
    props = []
    for _ in range(2):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = (0.05 + 0.3 * torch.rand(n, 2, generator=g)) * torch.tensor([w, h])
        p = Instances((h, w))
        p.proposal_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        p.objectness_logits = torch.rand(n, generator=g)
        props.append(p)
    return ImageList(torch.zeros(2, 3, h, w), [(h, w)] * 2), feats, props


def _heads_parity(heads_cfg, target, in_features, strides, channels=256, **extra):
    """Built-in heads from the config vs the same keywords with ``_target_ = target``: no
    built-in pooler/predictor left, built-in weights load strictly, same detections."""
    torch.manual_seed(0)
    ref = instantiate(heads_cfg).eval()
    for name, m in ref.named_modules():
        if name.endswith("cls_score"):
            torch.nn.init.normal_(m.weight, std=0.3)
    ours_cfg = copy.deepcopy(heads_cfg)
    ours_cfg._target_ = target
    ours_cfg.update(extra)
    ours = instantiate(ours_cfg).eval()
    assert type(ours) is target
    assert not leftover_builtin_modules(ours)
    assert any(isinstance(m, FastRCNNPredictor) for m in ours.modules())
    ours.load_state_dict(ref.state_dict(), strict=True)
    images, feats, props = _inputs(in_features, strides, channels)
    with torch.no_grad():
        a, _ = ours(images, feats, props)
        b, _ = ref(images, feats, props)
    assert compare_outputs([{"instances": x} for x in a], [{"instances": x} for x in b]) is None
    return ours


def _model_cfg(name, thresh=0.0):
    model = model_zoo.get_config(name).model
    return model


@pytest.mark.parametrize("target,sampler", [(PluginROIHeads, "gather"), (GridSampleROIHeads, "grid_sample")])
def test_fpn_heads_from_keywords_swap_pooler_and_predictor(target, sampler):
    heads = _model_cfg("common/models/mask_rcnn_fpn.py").roi_heads
    heads.box_predictor.test_score_thresh = 0.0
    heads.box_predictor.test_topk_per_image = 20
    ours = _heads_parity(heads, target, ["p2", "p3", "p4", "p5"], [4, 8, 16, 32])
    assert isinstance(ours.box_pooler, ROIAlignPooler) and ours.box_pooler.sampler == sampler
    assert isinstance(ours.mask_pooler, ROIAlignPooler) and ours.mask_pooler.output_size == (14, 14)


@pytest.mark.slow
def test_cascade_heads_from_keywords():
    heads = _model_cfg("common/models/cascade_rcnn.py").roi_heads
    for p in heads.box_predictors:
        p.test_score_thresh = 0.0
        p.test_topk_per_image = 20
    ours = _heads_parity(heads, PluginCascadeROIHeads, ["p2", "p3", "p4", "p5"], [4, 8, 16, 32],
                         sampler="grid_sample")
    assert isinstance(ours.box_pooler, ROIAlignPooler) and ours.box_pooler.sampler == "grid_sample"
    assert [tuple(p.box2box_transform.weights) for p in ours.box_predictor] == [
        (10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]


@pytest.mark.slow
def test_c4_heads_from_keywords():
    model = _model_cfg("common/models/mask_rcnn_c4.py")
    heads = model.roi_heads
    heads.box_predictor.test_score_thresh = 0.0
    heads.box_predictor.test_topk_per_image = 20
    ours = _heads_parity(heads, PluginRes5ROIHeads, ["res4"], [16], channels=1024)
    assert isinstance(ours.pooler, ROIAlignPooler) and ours.pooler.scales == (1 / 16,)


@pytest.mark.parametrize("name,target,right", [
    ("common/models/mask_rcnn_c4.py", PluginROIHeads, "PluginRes5ROIHeads"),
    ("common/models/cascade_rcnn.py", PluginROIHeads, "PluginCascadeROIHeads"),
    ("common/models/mask_rcnn_fpn.py", PluginRes5ROIHeads, "PluginROIHeads"),
])
def test_wrong_family_fails_loudly(name, target, right):
    heads = _model_cfg(name).roi_heads
    heads._target_ = target
    with pytest.raises(TypeError, match=right):
        instantiate(heads)


def test_modules_instantiate_without_yacs():
    from detectron2.layers import ShapeSpec
    from detectron2.config import LazyCall as L
    from detectron2.modeling.box_regression import Box2BoxTransform
    p = instantiate(L(ROIAlignPooler)(output_size=7, scales=[0.25, 0.125], sampling_ratio=2,
                                      pooler_type="ROIAlign", sampler="grid_sample"))
    assert p.output_size == (7, 7) and p.sampler == "grid_sample" and not p.aligned
    h = instantiate(L(roi_plugin.TwoMLPHead)(input_shape=ShapeSpec(channels=8, height=7, width=7), fc_dim=16))
    assert h.fc1.in_features == 8 * 49 and h.output_shape.channels == 16
    f = instantiate(L(FastRCNNPredictor)(input_shape=ShapeSpec(channels=16), num_classes=3,
                                         box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
                                         cls_score_std=0.1))
    assert f.cls_score.out_features == 4 and abs(float(f.cls_score.weight.std()) - 0.1) < 0.05


def test_pooler_and_predictor_conversion_keeps_settings():
    from detectron2.modeling.box_regression import Box2BoxTransform
    from detectron2.layers import ShapeSpec
    rp = ROIPooler(14, (1 / 8, 1 / 16), 3, "ROIAlign", canonical_box_size=112, canonical_level=3)
    p = roi_plugin.pooler_from_roi_pooler(rp, "grid_sample")
    assert (p.output_size, p.scales, p.sampling_ratio, p.pooler_type, p.canonical_box_size, p.canonical_level,
            p.sampler) == ((14, 14), (1 / 8, 1 / 16), 3, "ROIAlign", 112, 3, "grid_sample")
    # ROIPool converts too (its level poolers are torchvision's RoIPool); other level poolers are refused.
    q = roi_plugin.pooler_from_roi_pooler(ROIPooler(7, (1 / 8,), 0, "ROIPool"))
    assert (q.output_size, q.scales, q.pooler_type) == ((7, 7), (1 / 8,), "ROIPool")
    odd = ROIPooler(7, (1 / 8,), 0, "ROIAlign")
    odd.level_poolers[0] = torch.nn.Identity()
    with pytest.raises(ValueError, match="ROIAlign, ROIAlignV2, ROIAlignRotated and ROIPool; this ROIPooler uses Identity"):
        roi_plugin.pooler_from_roi_pooler(odd)
    # A rotated ROIPooler (its kernel needs detectron2's compiled _C) becomes the pure-PyTorch mode.
    r = roi_plugin.pooler_from_roi_pooler(ROIPooler(7, (1 / 4, 1 / 8), 2, "ROIAlignRotated"))
    assert (r.output_size, r.scales, r.sampling_ratio, r.pooler_type) == ((7, 7), (1 / 4, 1 / 8), 2, "ROIAlignRotated")
    old = FastRCNNOutputLayers(ShapeSpec(channels=12), box2box_transform=Box2BoxTransform((1, 2, 3, 4)),
                               num_classes=5, test_score_thresh=0.3, cls_agnostic_bbox_reg=True,
                               box_reg_loss_type="giou", loss_weight={"loss_cls": 2.0, "loss_box_reg": 0.5})
    new = roi_plugin.predictor_from_output_layers(old)
    assert type(new) is FastRCNNPredictor
    for k, v in old.state_dict().items():
        assert torch.equal(new.state_dict()[k], v)
    for attr in ("num_classes", "test_score_thresh", "test_nms_thresh", "test_topk_per_image", "smooth_l1_beta",
                 "box_reg_loss_type", "loss_weight", "use_sigmoid_ce", "use_fed_loss"):
        assert getattr(new, attr) == getattr(old, attr), attr
    assert new.box2box_transform is old.box2box_transform and new.bbox_pred.out_features == 4


def test_new_baselines_plugin_config_matches_detectron2():
    ours_cfg = LazyConfig.load(os.path.join(REPO, "configs", "lazy", "mask_rcnn_R_50_FPN_100ep_LSJ_plugin.py"))
    ref_cfg = model_zoo.get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
    for c in (ours_cfg, ref_cfg):
        c.model.roi_heads.box_predictor.test_score_thresh = 0.0
        c.model.roi_heads.box_predictor.test_topk_per_image = 20
        c.model.pixel_std = [57.375, 57.120, 58.395]
        c.model.proposal_generator.post_nms_topk = (64, 64)
    torch.manual_seed(0)
    ref = instantiate(ref_cfg.model).eval()
    torch.nn.init.normal_(ref.roi_heads.box_predictor.cls_score.weight, std=0.3)
    ours = instantiate(ours_cfg.model).eval()
    assert type(ours.roi_heads) is PluginROIHeads and not leftover_builtin_modules(ours)
    assert isinstance(ours.roi_heads.box_pooler, ROIAlignPooler)
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(0)
    imgs = [{"image": torch.rand(3, 128, 160, generator=g) * 255, "height": 128, "width": 160}]
    with torch.no_grad():
        assert compare_outputs(ours(imgs), ref(imgs)) is None


@pytest.mark.slow
def test_shapes_lazy_config_trains_two_iterations_and_evaluates(tmp_path):
    from roi_plugin.data.shapes import SHAPES_CLASSES
    from roi_plugin.engine.lazy_train import do_train
    import detectron2.data.transforms as T
    from detectron2.config import LazyCall as L
    name = "shapes_val_lazy_test"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: DatasetCatalog.get("shapes_val")[:6])
        MetadataCatalog.get(name).set(thing_classes=list(SHAPES_CLASSES))
    cfg = LazyConfig.load(os.path.join(REPO, "configs", "lazy", "shapes_mask_rcnn_plugin.py"))
    cfg = LazyConfig.apply_overrides(cfg, [
        "train.max_iter=2", f"train.output_dir={tmp_path}", "train.log_period=1",
        "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0", f"dataloader.train.dataset.names={name}",
        f"dataloader.test.dataset.names={name}",
    ])
    resize = [L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)]
    cfg.dataloader.train.mapper.augmentations = resize
    cfg.dataloader.test.mapper.augmentations = resize
    cfg.dataloader.evaluator.output_dir = str(tmp_path)
    torch.manual_seed(0)
    model, results = do_train(cfg)
    heads = model.roi_heads
    assert type(heads) is PluginROIHeads and not leftover_builtin_modules(model)
    assert isinstance(heads.box_head, roi_plugin.TwoMLPHead) and isinstance(heads.box_predictor, FastRCNNPredictor)
    assert set(results) == {"bbox", "segm"} and "AP" in results["bbox"]
    assert os.path.isfile(tmp_path / "model_final.pth")


def test_any_model_one_line_route():
    """Any model from a LazyConfig: the config ends with `model = L(convert_model)(model=model,
    sampler=...)`. The model keeps its class and the built-in weights give its detections;
    command-line overrides of the model move under `model.model.`, and an old path fails loudly
    at instantiate instead of being ignored."""
    from detectron2.config import LazyCall as L
    from checking import check_conversion, lazy_batch, shrink_lazy

    cfg = model_zoo.get_config("common/models/mask_rcnn_fpn.py")
    model = shrink_lazy(cfg.model)
    model.backbone.bottom_up.freeze_at = 5  # CPU time: no backward through the bottom-up network
    batch = lazy_batch(model, sizes=((128, 160), (160, 128)))
    cfg.model = L(roi_plugin.convert_model)(model=model, sampler="grid_sample")
    row = check_conversion(lambda: instantiate(model), lambda s: instantiate(cfg.model), batch,
                           samplers=("grid_sample",))
    assert row["grid_sample"] == {"build": "ok", "swapped": "2 / 1", "parity": "ok", "train": "ok",
                                  "losses": row["grid_sample"]["losses"], "infer": "ok"}, row
    ok = LazyConfig.apply_overrides(copy.deepcopy(cfg), ["model.model.roi_heads.num_classes=3"])
    assert ok.model.model.roi_heads.num_classes == 3
    stale = LazyConfig.apply_overrides(copy.deepcopy(cfg), ["model.roi_heads.num_classes=3"])
    with pytest.raises(TypeError, match="roi_heads"):
        instantiate(stale.model)
