"""Issue 19: ``convert_model`` and ``MODEL.META_ARCHITECTURE: "ROIPluginModel"`` on models that have
no plugin class: a user's ``StandardROIHeads`` subclass with an extra branch that owns its own
``ROIPooler`` (reachable at two paths), and PointRend (``detectron2.projects.point_rend``), each
with both samplers: no ``ROIPooler`` left, the built-in model's weights give its detections and
extra outputs, 2 training iterations with finite losses (``checking.check_conversion``). Then
the rules: a ``ROIPool`` model converted, a refused conversion changes nothing, idempotence, shared modules,
parameters kept (objects, device, dtype, ``requires_grad``, no RNG drawn), and the plugin
heads initialised as the built-in ones under one seed. Tiny frozen R50-FPN models on 2 images of
128 x 160 px."""
import logging

import pytest
import torch
from torch import nn

from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.modeling.box_regression import Box2BoxTransform, Box2BoxTransformRotated
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.rotated_fast_rcnn import RotatedFastRCNNOutputLayers

import roi_plugin
from roi_plugin import (
    SAMPLERS, FastRCNNPredictor, ROIAlignPooler, RotatedFastRCNNPredictor, add_roi_plugin_config,
    convert_model, plan_conversion,
)
from checking import check_conversion, config_route, conversion_ok, random_batch
from helpers import tiny_cfg


@ROI_HEADS_REGISTRY.register()
class ExtraBranchROIHeads(StandardROIHeads):
    """A user's research head: StandardROIHeads plus a branch with its own ``ROIPooler`` (legacy
    ROIAlign, 5x5, sampling ratio 2) that predicts 3 numbers per box, built the DensePose way
    (``__init__(cfg, input_shape)``). The pooler is also in a ``ModuleDict`` (two paths)."""

    def __init__(self, cfg, input_shape):
        super().__init__(cfg, input_shape)
        channels = input_shape[self.in_features[0]].channels
        self.extra_pooler = ROIPooler(output_size=5, scales=[1.0 / input_shape[f].stride for f in self.in_features],
                                      sampling_ratio=2, pooler_type="ROIAlign")
        self.extra = nn.ModuleDict({"pooler": self.extra_pooler, "head": nn.Linear(channels * 25, 3)})

    def _extra(self, features, boxes):
        x = self.extra["pooler"]([features[f] for f in self.in_features], boxes)
        return self.extra["head"](x.flatten(1))

    def forward(self, images, features, proposals, targets=None):
        instances, losses = super().forward(images, features, proposals, targets)
        if self.training:  # instances are the sampled proposals
            losses["loss_extra"] = self._extra(features, [p.proposal_boxes for p in instances]).pow(2).mean()
        else:
            out = self._extra(features, [i.pred_boxes for i in instances])
            for inst, part in zip(instances, out.split([len(i) for i in instances])):
                inst.pred_extra = part
        return instances, losses


def _tiny(cfg, *opts):
    cfg.merge_from_list([
        # R50 with 8 channels per group, frozen (the checks are about the heads: no backward
        # through the bottom-up network), 16-channel pyramid.
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.WIDTH_PER_GROUP", 8,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 32, "MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.BACKBONE.FREEZE_AT", 5,
        "MODEL.FPN.OUT_CHANNELS", 16, "MODEL.ROI_BOX_HEAD.FC_DIM", 32,
        "MODEL.ROI_MASK_HEAD.CONV_DIM", 8, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
        "MODEL.PIXEL_STD", [57.375, 57.120, 58.395],
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50,
        "MODEL.RPN.PRE_NMS_TOPK_TEST", 200, "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
        "TEST.DETECTIONS_PER_IMAGE", 20, *opts,
    ])
    return cfg


def extra_branch_cfg(*opts):
    """Detectron2's stock set-up (no add_roi_plugin_config), as a third-party train_net.py has."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    return _tiny(cfg, "MODEL.ROI_HEADS.NAME", "ExtraBranchROIHeads", *opts)


def pointrend_cfg(*opts):
    """PointRend's InstanceSegmentation/Base-PointRend-RCNN-FPN.yaml (its keys, which the installed
    detectron2 ships without the YAML), tiny; with roi_plugin's keys."""
    from detectron2.projects.point_rend import add_pointrend_config

    cfg = get_cfg()
    add_pointrend_config(cfg)
    add_roi_plugin_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("Base-RCNN-FPN.yaml"))
    cfg.merge_from_list([
        "MODEL.MASK_ON", True, "MODEL.ROI_HEADS.NAME", "PointRendROIHeads",
        "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES", True, "MODEL.ROI_MASK_HEAD.POOLER_TYPE", "",
        "MODEL.ROI_MASK_HEAD.NAME", "PointRendMaskHead", "MODEL.ROI_MASK_HEAD.FC_DIM", 32,
        "MODEL.ROI_MASK_HEAD.NUM_FC", 2, "MODEL.ROI_MASK_HEAD.OUTPUT_SIDE_RESOLUTION", 7,
        "MODEL.ROI_MASK_HEAD.IN_FEATURES", ["p2"], "MODEL.ROI_MASK_HEAD.POINT_HEAD_ON", True,
        "MODEL.POINT_HEAD.FC_DIM", 16, "MODEL.POINT_HEAD.NUM_FC", 3, "MODEL.POINT_HEAD.IN_FEATURES", ["p2"],
        "MODEL.POINT_HEAD.NUM_CLASSES", 3, "MODEL.POINT_HEAD.TRAIN_NUM_POINTS", 49,
        "MODEL.POINT_HEAD.SUBDIVISION_STEPS", 2, "MODEL.POINT_HEAD.SUBDIVISION_NUM_POINTS", 196,
        "INPUT.MASK_FORMAT", "bitmask",
    ])
    return _tiny(cfg, *opts)


def _batch(cfg):
    return lambda seed, train=True: random_batch(cfg, seed, sizes=((128, 160), (160, 128)), train=train)


CASES = {
    "extra_branch-convert_model": (extra_branch_cfg, lambda cfg, s: convert_model(build_model(cfg), s)),
    "extra_branch-config_route": (extra_branch_cfg, lambda cfg, s: build_model(config_route(cfg, s))),
    "pointrend-config_route": (pointrend_cfg, lambda cfg, s: build_model(config_route(cfg, s))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_models_without_a_plugin_class(case):
    make_cfg, convert = CASES[case]
    cfg = make_cfg()
    row = check_conversion(lambda: build_model(cfg), lambda s: convert(cfg, s), _batch(cfg), samplers=SAMPLERS)
    assert conversion_ok(row, SAMPLERS), row
    # extra_branch: box + mask + its own pooler; PointRend: the box pooler only (its mask head
    # samples points itself). One predictor each.
    want = (3, 1) if case.startswith("extra") else (1, 1)
    assert (row["poolers"], row["predictors"]) == want
    for s in SAMPLERS:
        assert row[s]["swapped"] == f"{want[0]} / {want[1]}"


def _snapshot(model):
    return [(n, type(m)) for n, m in model.named_modules(remove_duplicate=False)], \
        {k: v.clone() for k, v in model.state_dict().items()}


def test_extra_branch_pooler_keeps_its_settings_and_stays_shared():
    torch.manual_seed(0)
    model = build_model(extra_branch_cfg())
    old = model.roi_heads.extra_pooler
    swaps = plan_conversion(model, "grid_sample")
    assert type(model.roi_heads.extra_pooler) is ROIPooler  # planning changes nothing
    assert sorted(p for s in swaps for p in s.paths) == [
        "roi_heads.box_pooler", "roi_heads.box_predictor", "roi_heads.extra.pooler", "roi_heads.extra_pooler",
        "roi_heads.mask_pooler"]
    convert_model(model, "grid_sample")
    new = model.roi_heads.extra_pooler
    assert new is model.roi_heads.extra["pooler"] and isinstance(new, ROIAlignPooler)
    assert (new.output_size, new.scales, new.sampling_ratio, new.pooler_type, new.sampler,
            new.canonical_box_size, new.canonical_level) == (
        (5, 5), tuple(p.spatial_scale for p in old.level_poolers), 2, "ROIAlign", "grid_sample", 224, 4)


@pytest.mark.parametrize("route", ["convert_model", "config_route"])
def test_roi_pool_model_converts(route):
    """Issue 29.1: a model whose box ROIPooler is ``ROIPool`` converts (both routes) and detects as
    the built-in model with its weights (ROIPool is one implementation: the sampler does not apply)."""
    cfg = extra_branch_cfg("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIPool")
    convert = CASES[f"extra_branch-{route}"][1]
    row = check_conversion(lambda: build_model(cfg), lambda s: convert(cfg, s), _batch(cfg), samplers=("gather",))
    assert conversion_ok(row, ("gather",)), row
    model = convert(cfg, "gather")
    assert model.roi_heads.box_pooler.pooler_type == "ROIPool"


def test_sampling_ratio_minus_one_config_converts():
    """Issue 29.7: ``POOLER_SAMPLING_RATIO: -1`` (adaptive in ROIPooler and torchvision) converts
    and pools as 0 does."""
    cfg = extra_branch_cfg("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", -1)
    row = check_conversion(lambda: build_model(cfg), lambda s: convert_model(build_model(cfg), s), _batch(cfg))
    assert conversion_ok(row, SAMPLERS), row
    assert convert_model(build_model(cfg)).roi_heads.box_pooler.sampling_ratio == 0


def test_refused_conversion_changes_nothing():
    """A conversion that cannot be done (here: all_levels='conv' without channels, and a
    pooler_types path without an ROIPooler) raises naming every path, the model unchanged."""
    torch.manual_seed(0)
    model = build_model(extra_branch_cfg())
    types, state = _snapshot(model)
    with pytest.raises(ValueError, match=r"roi_heads\.box_pooler: .*channels") as err:
        convert_model(model, all_levels="conv")
    assert "nothing was changed" in str(err.value) and "roi_heads.mask_pooler" in str(err.value)
    with pytest.raises(ValueError, match=r"roi_heads\.box_head: pooler_types names no ROIPooler there"):
        convert_model(model, pooler_types={"roi_heads.box_head": "PrRoIPool"})
    after_types, after_state = _snapshot(model)
    assert after_types == types
    assert after_state.keys() == state.keys() and all(torch.equal(after_state[k], v) for k, v in state.items())


def test_pooler_options_and_types_reach_the_converted_poolers():
    torch.manual_seed(0)
    model = convert_model(build_model(extra_branch_cfg()), pooler_types={"roi_heads.box_pooler": "PrRoIPool"},
                          all_levels="conv", channels=16, all_levels_kernel=1, roi_scale_factor=1.2)
    box, mask, extra = model.roi_heads.box_pooler, model.roi_heads.mask_pooler, model.roi_heads.extra_pooler
    assert (box.pooler_type, mask.pooler_type, extra.pooler_type) == ("PrRoIPool", "ROIAlignV2", "ROIAlign")
    for p in (box, mask, extra):
        assert p.all_levels == "conv" and p.fuse.pre.kernel_size == (1, 1) and p.roi_scale_factor == 1.2
    assert "roi_heads.box_pooler.fuse.pre.weight" in model.state_dict()


def test_converting_twice_changes_nothing(caplog):
    torch.manual_seed(0)
    model = convert_model(build_model(extra_branch_cfg()), "grid_sample")
    modules = dict(model.named_modules(remove_duplicate=False))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert plan_conversion(model, "gather") == []  # an ROIAlignPooler is left alone, whatever the sampler
    with caplog.at_level(logging.INFO, logger="detectron2.roi_plugin"):
        assert convert_model(model, "gather") is model
    assert "converted 0 module(s) of GeneralizedRCNN (nothing left to convert)" in caplog.text
    assert all(modules[n] is m for n, m in model.named_modules(remove_duplicate=False))
    assert model.roi_heads.box_pooler.sampler == "grid_sample"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_summary_line_lists_the_swapped_paths(caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="detectron2.roi_plugin"):
        model = build_model(config_route(extra_branch_cfg(), "gather"))
    lines = [r.getMessage() for r in caplog.records if r.name == "detectron2.roi_plugin"]
    assert len(lines) == 1 and lines[0].startswith("roi_plugin: converted 4 module(s) of GeneralizedRCNN: ")
    assert "roi_heads.extra_pooler = roi_heads.extra.pooler (ROIPooler -> ROIAlignPooler[gather])" in lines[0]
    assert type(model) is GeneralizedRCNN


def test_predictor_keeps_parameter_objects_dtype_and_draws_no_random_numbers():
    old = FastRCNNOutputLayers(ShapeSpec(channels=12), box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
                               num_classes=4).double().eval()
    old.cls_score.weight.requires_grad_(False)
    params = dict(old.named_parameters())
    rng = torch.random.get_rng_state()
    new = convert_model(old)  # the root itself is replaced
    assert torch.equal(rng, torch.random.get_rng_state())
    assert type(new) is FastRCNNPredictor and not new.training
    assert all(p is params[n] for n, p in new.named_parameters())
    assert new.cls_score.weight.dtype == torch.float64 and not new.cls_score.weight.requires_grad
    assert all(not p.is_meta for p in new.parameters())
    rotated = RotatedFastRCNNOutputLayers(ShapeSpec(channels=8), box2box_transform=Box2BoxTransformRotated(
        (10, 10, 5, 5, 1)), num_classes=2)
    converted = convert_model(nn.Sequential(rotated))[0]
    assert type(converted) is RotatedFastRCNNPredictor and converted.bbox_pred.weight is rotated.bbox_pred.weight


def test_module_in_a_plain_attribute_is_refused():
    holder = nn.Module()
    holder.pooler = ROIPooler(7, (1 / 8,), 0, "ROIAlignV2")
    object.__setattr__(holder, "cached", [holder.pooler])  # a reference a swap cannot reach
    with pytest.raises(ValueError, match=r"cached\[0\]: a ROIPooler in a plain attribute"):
        convert_model(holder)
    assert type(holder.pooler) is ROIPooler
    with pytest.raises(ValueError, match="sampler 'nearest'"):
        convert_model(nn.Sequential(), "nearest")


def test_plugin_heads_initialise_as_the_builtin_heads():
    """Same seed -> the same weights as StandardROIHeads + FastRCNNConvFCHead (TwoMLPHead draws as
    it does) and the same RNG state after; non-default ROI_PLUGIN keys apply on top."""
    cfg = tiny_cfg()
    builtin = cfg.clone()
    builtin.MODEL.ROI_HEADS.NAME, builtin.MODEL.ROI_BOX_HEAD.NAME = "StandardROIHeads", "FastRCNNConvFCHead"
    models, rngs = [], []
    for c in (builtin, cfg, config_route(builtin, "gather")):
        torch.manual_seed(0)
        models.append(build_model(c))
        rngs.append(torch.random.get_rng_state())
    ref = models[0].state_dict()
    for m, rng in zip(models[1:], rngs[1:]):
        assert torch.equal(rng, rngs[0])
        assert m.state_dict().keys() == ref.keys() and all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())
        assert isinstance(m.roi_heads.box_predictor, FastRCNNPredictor)
    # Other values re-draw that layer; the level rule's constants reach every pooler.
    for c in (cfg, config_route(builtin, "gather")):
        c.merge_from_list(["MODEL.ROI_PLUGIN.CLS_SCORE_INIT_STD", 0.2, "MODEL.ROI_PLUGIN.CANONICAL_LEVEL", 3])
        torch.manual_seed(0)
        heads = build_model(c).roi_heads
        assert abs(float(heads.box_predictor.cls_score.weight.detach().std()) - 0.2) < 0.02
        assert torch.equal(heads.box_predictor.bbox_pred.weight, ref["roi_heads.box_predictor.bbox_pred.weight"])
        assert not heads.box_predictor.cls_score.bias.any()
        assert heads.box_pooler.canonical_level == heads.mask_pooler.canonical_level == 3
        assert heads.box_pooler.canonical_box_size == 224


def test_meta_architecture_key():
    cfg = extra_branch_cfg()
    add_roi_plugin_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "ROIPluginModel"
    cfg.MODEL.ROI_PLUGIN.META_ARCHITECTURE = "ROIPluginModel"
    with pytest.raises(ValueError, match="cannot be \"ROIPluginModel\" itself"):
        build_model(cfg)
    assert roi_plugin.convert_model is convert_model
