# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Check the plugin's swap on Detectron2's model-zoo YAML configs (``tools/model_zoo_check.py``).

For one config: build Detectron2's model (random init, seeded), then for each sampler the
README's swap (``MODEL.ROI_HEADS.NAME`` -> the plugin class of its family, the config's own
box head, ``MODEL.ROI_PLUGIN.SAMPLER``), and check that

* build: no Detectron2 ``ROIPooler`` and no plain ``FastRCNNOutputLayers`` is left;
* parity: the built-in model's ``state_dict`` loads strictly and inference on 2 random images
  gives the built-in heads' detections (boxes and scores within 1e-3, same classes, pasted
  masks and keypoints agreeing);
* train: 2 SGD iterations on 2 random annotated images give finite losses;
* infer: an inference pass after training runs.

Inputs are small (2 images of about 256-320 px) and RPN/ROI sampling is reduced, so each
config takes seconds; the architecture (depth, norm, heads) is the config's own unless
``tiny=True`` (CI: bottlenecks narrowed to 16 channels per group, 32 in GroupNorm models).

:func:`check_conversion` runs the same checks on any model and any conversion route
(``convert_model``, ``MODEL.META_ARCHITECTURE: ROIPluginModel``, a LazyConfig ending in
``L(convert_model)``): ``tests/test_convert_model.py`` and ``tools/projects_check.py``.
"""
import dataclasses
import math
import os
import time
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.rotated_fast_rcnn import RotatedFastRCNNOutputLayers
from detectron2.utils.events import EventStorage
from detectron2.structures import BitMasks, Boxes, Instances, Keypoints

from roi_plugin import PLUGIN_HEADS, SAMPLERS, FastRCNNPredictor, ROIAlignPooler, add_roi_plugin_config

__all__ = ["zoo_configs", "load_zoo_cfg", "skip_reason", "plugin_swap", "random_batch", "check_config"]

ROI_ARCHS = ("GeneralizedRCNN", "PanopticFPN")


def zoo_configs() -> List[str]:
    """Every YAML under ``detectron2/model_zoo/configs``, relative paths, sorted."""
    root = os.path.dirname(model_zoo.get_config_file("Base-RCNN-FPN.yaml"))
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in files if f.endswith(".yaml")]
    return sorted(out)


def load_zoo_cfg(name: str):
    cfg = get_cfg()
    add_roi_plugin_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(name))
    return cfg


def skip_reason(cfg) -> Optional[str]:
    """Why a config cannot be checked here (None: it can)."""
    if cfg.MODEL.META_ARCHITECTURE not in ROI_ARCHS:
        return f"no ROI heads ({cfg.MODEL.META_ARCHITECTURE})"
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        return "deformable convolution (needs detectron2's compiled _C)"
    if cfg.MODEL.ROI_HEADS.NAME not in PLUGIN_HEADS:
        return f"no plugin class for {cfg.MODEL.ROI_HEADS.NAME}"
    return None


def plugin_swap(cfg, sampler: str):
    """The README's swap: the plugin class of the config's ROI-heads family and the sampler.

    The box head stays the config's own (TwoMLPHead replaces it only where it is 2 FC, no conv).
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.NAME = PLUGIN_HEADS[cfg.MODEL.ROI_HEADS.NAME]
    cfg.MODEL.ROI_PLUGIN.SAMPLER = sampler
    return cfg


def shrink(cfg, tiny: bool = False):
    """Small inputs and ROI budgets for CPU; ``tiny`` also narrows the backbone."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        # Random init + FrozenBN: unit-variance input keeps activations sane.
        "MODEL.PIXEL_STD", [57.375, 57.120, 58.395],
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64,
        "MODEL.RPN.PRE_NMS_TOPK_TEST", 200, "MODEL.RPN.POST_NMS_TOPK_TEST", 64,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 50,
    ])
    if cfg.MODEL.RESNETS.NORM == "SyncBN":  # one CPU process: SyncBN is BN
        cfg.MODEL.RESNETS.NORM = "BN"
    for key in ("FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD", "SEM_SEG_HEAD"):
        if cfg.MODEL[key].get("NORM") == "SyncBN":
            cfg.MODEL[key].NORM = "BN"
    if tiny:
        # GroupNorm has 32 groups: GN models keep 32 channels where the others get 16.
        norms = [cfg.MODEL.RESNETS.NORM] + [cfg.MODEL[k].get("NORM") for k in ("FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD")]
        narrow = 32 if "GN" in norms else 16
        cfg.merge_from_list([
            "MODEL.RESNETS.WIDTH_PER_GROUP", narrow, "MODEL.RESNETS.NUM_GROUPS", 1,
            "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.STEM_OUT_CHANNELS", 32,
            "TEST.DETECTIONS_PER_IMAGE", 20,
            "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
            "MODEL.ROI_BOX_HEAD.CONV_DIM", 32, "MODEL.ROI_MASK_HEAD.CONV_DIM", narrow,
            "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", [32, 32], "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
        ])
    return cfg


def config_route(cfg, sampler: str):
    """``cfg`` through the config-only route: ``MODEL.META_ARCHITECTURE: ROIPluginModel`` and nothing
    else for the default sampler (a stock script's cfg, without ``add_roi_plugin_config``); for
    another sampler the keys are added and ``MODEL.ROI_PLUGIN.SAMPLER`` set."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.META_ARCHITECTURE = "ROIPluginModel"
    if sampler != "gather":
        if "ROI_PLUGIN" not in cfg.MODEL:
            add_roi_plugin_config(cfg)
        cfg.MODEL.ROI_PLUGIN.SAMPLER = sampler
    return cfg


def shrink_lazy(model, channels: int = 32, fc: int = 64):
    """:func:`shrink` (``tiny=True``) for a LazyConfig ``GeneralizedRCNN`` node (``cfg.model``), in
    place: small inputs and ROI budgets, and the backbone, pyramid and heads narrowed. Handles the
    backbones of Detectron2's LazyConfig zoo and projects: ``FPN`` over ``ResNet`` or ``MViT``,
    ``SimpleFeaturePyramid`` over ``ViT``; image side at most 256 px."""
    from detectron2.modeling import MViT, SimpleFeaturePyramid, ViT
    from detectron2.modeling.backbone import ResNet

    model.pixel_std = [57.375, 57.120, 58.395]  # random init: unit-variance input
    bb = model.backbone
    bb.out_channels = channels
    if bb._target_ is SimpleFeaturePyramid:
        bb.square_pad = 256
    net = bb.net if bb._target_ is SimpleFeaturePyramid else bb.bottom_up
    if net._target_ is ViT:  # 2 blocks, the first windowed, the second global, as ViTDet alternates
        net.update(img_size=256, embed_dim=48, depth=2, num_heads=2, window_size=4, window_block_indexes=[0],
                   drop_path_rate=0.0)
    elif net._target_ is MViT:  # one block per stage
        net.update(embed_dim=16, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3), drop_path_rate=0.0)
    elif net._target_ is ResNet:
        net.stages.update(depth=18)
        net.stages.pop("stride_in_1x1", None)  # BasicBlock (R18) has no such argument
    model.proposal_generator.head.in_channels = channels
    model.proposal_generator.update(pre_nms_topk=(200, 200), post_nms_topk=(64, 64))
    heads = model.roi_heads
    heads.batch_size_per_image = 32
    box_heads = heads.box_heads if "box_heads" in heads else [heads.box_head]
    predictors = heads.box_predictors if "box_predictors" in heads else [heads.box_predictor]
    for h in box_heads:
        h.input_shape = ShapeSpec(channels=channels, height=h.input_shape.height, width=h.input_shape.width)
        h.conv_dims = [channels] * min(len(h.conv_dims), 2)
        h.fc_dims = [fc] * len(h.fc_dims)
    for p in predictors:
        p.update(input_shape=ShapeSpec(channels=fc), test_score_thresh=0.0, test_topk_per_image=20)
    if "mask_head" in heads:
        m = heads.mask_head
        m.input_shape = ShapeSpec(channels=channels, height=m.input_shape.height, width=m.input_shape.width)
        m.conv_dims = [channels] * 2
    return model


def random_batch(cfg, seed: int, sizes=None, train: bool = True) -> List[Dict]:
    """2 random images with 3 random annotated objects each (boxes, masks, keypoints, semantic
    map and precomputed proposals as the config needs)."""
    g = torch.Generator().manual_seed(seed)
    if sizes is None:  # small for tiny (narrowed) models
        sizes = ((160, 192), (192, 160)) if cfg.MODEL.RESNETS.WIDTH_PER_GROUP <= 16 else ((256, 320), (288, 256))
    out = []
    for h, w in sizes:
        d = {"image": torch.rand(3, h, w, generator=g) * 255, "height": h, "width": w}
        n = 3
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = (0.15 + 0.25 * torch.rand(n, 2, generator=g)) * torch.tensor([w, h])
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))], 1)
        if train:
            inst = Instances((h, w))
            inst.gt_boxes = Boxes(boxes)
            inst.gt_classes = torch.randint(0, cfg.MODEL.ROI_HEADS.NUM_CLASSES, (n,), generator=g)
            if cfg.MODEL.MASK_ON:
                masks = torch.zeros(n, h, w, dtype=torch.bool)
                for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                    masks[i, y0:y1, x0:x1] = True
                inst.gt_masks = BitMasks(masks)
            if cfg.MODEL.KEYPOINT_ON:
                k = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS
                t = torch.rand(n, k, 2, generator=g)
                pts = boxes[:, None, :2] + t * (boxes[:, None, 2:] - boxes[:, None, :2])
                inst.gt_keypoints = Keypoints(torch.cat([pts, torch.full((n, k, 1), 2.0)], 2))
            d["instances"] = inst
            if cfg.MODEL.META_ARCHITECTURE == "PanopticFPN":
                d["sem_seg"] = torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (h, w), generator=g)
        if cfg.MODEL.LOAD_PROPOSALS:
            m = 40
            xy = torch.rand(m, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
            wh = (0.05 + 0.3 * torch.rand(m, 2, generator=g)) * torch.tensor([w, h])
            props = Instances((h, w))
            props.proposal_boxes = Boxes(torch.cat([xy, xy + wh], 1))
            props.objectness_logits = torch.rand(m, generator=g)
            d["proposals"] = props
        out.append(d)
    return out


def lazy_batch(model, sizes=((160, 192), (192, 160))) -> Callable:
    """``batch(seed, train=True)``: :func:`random_batch` for a LazyConfig ``GeneralizedRCNN`` node
    (its ``roi_heads.num_classes``; masks when it has a mask head)."""
    stand_in = get_cfg()  # the keys random_batch reads
    stand_in.MODEL.ROI_HEADS.NUM_CLASSES = model.roi_heads.num_classes
    stand_in.MODEL.MASK_ON = "mask_head" in model.roi_heads
    return lambda seed, train=True: random_batch(stand_in, seed, sizes=sizes, train=train)


def _spread_scores(model):
    """Random init gives near-uniform class scores; spread them so ranking and NMS are defined."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, mod in model.roi_heads.named_modules():
            if name.endswith("cls_score"):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.3)


def _tame_residuals(model, factor: float = 0.2):
    """Random init: scale the last norm of every residual branch (as zero-init-residual does, but
    not to zero) so that R101/X101 activations stay finite through 33 blocks of FrozenBN."""
    with torch.no_grad():
        for m in model.backbone.modules():
            norm = getattr(getattr(m, "conv3", None), "norm", None)
            if norm is not None and getattr(norm, "weight", None) is not None:
                norm.weight.mul_(factor)


def _tensors(value) -> Optional[Dict[str, torch.Tensor]]:
    """The tensors of an output field: itself, its ``.tensor`` (Boxes), or a dataclass's tensor
    fields (DensePose's predictor outputs); None for anything else."""
    if isinstance(value, torch.Tensor):
        return {"": value}
    if isinstance(getattr(value, "tensor", None), torch.Tensor):
        return {"": value.tensor}
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
                if isinstance(getattr(value, f.name), torch.Tensor)}
    return None


def compare_outputs(ours: List[Dict], ref: List[Dict], atol: float = 1e-3, score_atol: Optional[float] = None) -> Optional[str]:
    """None when the detections agree; otherwise what differs.

    Boxes within ``atol`` px, scores within ``score_atol`` (default ``atol``), the same classes,
    pasted masks and keypoints agreeing; every other tensor field of the instances (a project's
    extra outputs, e.g. DensePose's ``pred_densepose``) within ``atol + 1e-3 * |ref|``.
    """
    total = 0
    tolerance = {"pred_boxes": atol, "scores": atol if score_atol is None else score_atol}
    for a, b in zip(ours, ref):
        ia, ib = a["instances"], b["instances"]
        if len(ia) != len(ib):
            return f"{len(ia)} detections vs {len(ib)}"
        if set(ia.get_fields()) != set(ib.get_fields()):
            return f"fields {sorted(ia.get_fields())} vs {sorted(ib.get_fields())}"
        total += len(ia)
        if len(ia) == 0:
            continue
        for field, tol in tolerance.items():
            x, y = ia.get(field), ib.get(field)
            x, y = getattr(x, "tensor", x), getattr(y, "tensor", y)
            if not torch.allclose(x, y, rtol=0, atol=tol):
                return f"{field} differ by {float((x - y).abs().max()):.2e}"
        if not torch.equal(ia.pred_classes, ib.pred_classes):
            return "pred_classes differ"
        if ia.has("pred_masks"):
            x, y = ia.pred_masks, ib.pred_masks
            if x.dtype == torch.bool:  # pasted: all but pixels at the 0.5 threshold agree
                if (x != y).float().mean() > 1e-3:
                    return "pred_masks differ"
            elif not torch.allclose(x, y, rtol=0, atol=atol):  # probabilities before pasting
                return f"pred_masks differ by {float((x - y).abs().max()):.2e}"
        if ia.has("pred_keypoints"):
            close = ((ia.pred_keypoints[..., :2] - ib.pred_keypoints[..., :2]).abs() <= 1.0).all(-1)
            if close.float().mean() < 0.99:
                return "pred_keypoints differ"
        for field in sorted(set(ia.get_fields()) - set(tolerance) - {"pred_classes", "pred_masks", "pred_keypoints"}):
            xs, ys = _tensors(ia.get(field)), _tensors(ib.get(field))
            if xs is None or ys is None:
                return f"{field}: no rule to compare a {type(ib.get(field)).__name__}"
            for key, y in ys.items():
                x = xs[key]
                name = f"{field}.{key}" if key else field
                if x.shape != y.shape:
                    return f"{name} shapes {tuple(x.shape)} vs {tuple(y.shape)}"
                if x.is_floating_point():
                    if not ((x - y).abs() <= atol + 1e-3 * y.abs()).all():
                        return f"{name} differ by {float((x - y).abs().max()):.2e}"
                elif not torch.equal(x, y):
                    return f"{name} differ"
        if "sem_seg" in a and not torch.allclose(a["sem_seg"], b["sem_seg"], rtol=0, atol=atol):
            return "sem_seg differ"
    return None if total > 0 else "no detections to compare"


_PREDICTORS = (FastRCNNOutputLayers, RotatedFastRCNNOutputLayers)  # exact types, as convert_model


def leftover_builtin_modules(model) -> List[str]:
    """Names of Detectron2 ``ROIPooler`` and plain ``FastRCNNOutputLayers`` /
    ``RotatedFastRCNNOutputLayers`` left in ``model``."""
    return [n for n, m in model.named_modules()
            if isinstance(m, ROIPooler) or type(m) in _PREDICTORS]


def train_steps(model, cfg, iters: int = 2, seed: int = 0, batch: Optional[Callable] = None) -> List[float]:
    """``iters`` SGD steps on random annotated images (``batch(seed, train=True)``, default
    :func:`random_batch` for ``cfg``); returns the total losses."""
    batch = batch or (lambda s, train=True: random_batch(cfg, s, train=train))
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    totals = []
    for it in range(iters):
        with EventStorage(it):
            losses = model(batch(seed + it, train=True))
        total = sum(losses.values())
        if not all(torch.isfinite(v).all() for v in losses.values()):
            raise FloatingPointError(f"non-finite loss at iteration {it}: "
                                     f"{ {k: float(v) for k, v in losses.items()} }")
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(float(total))
    return totals


def distinct_modules(model, types) -> List[str]:
    """The first path of each distinct module of ``types`` in ``model``."""
    return [n for n, m in model.named_modules() if isinstance(m, types)]


def prepare_builtin(model) -> None:
    """Random init made usable for a parity check: tamed residual branches, spread class scores."""
    _tame_residuals(model)
    _spread_scores(model)


def check_conversion(build_builtin: Callable[[], nn.Module], build_converted: Callable[[str], nn.Module],
                     batch: Callable, samplers=SAMPLERS, box_atol: float = 1e-3, score_atol: float = 1e-4,
                     prepare: Callable = prepare_builtin) -> Dict:
    """Issue 19's checks of one model and one conversion route.

    ``build_builtin()`` builds Detectron2's model, ``build_converted(sampler)`` the converted one
    (``convert_model``, ``MODEL.META_ARCHITECTURE: ROIPluginModel`` or a LazyConfig ending in
    ``L(convert_model)``), each after ``torch.manual_seed(0)``; ``batch(seed, train)`` gives
    inputs. Per sampler: ``build`` (the built-in model's class, no ``ROIPooler`` nor plain
    predictor left, every pooler on that sampler), ``swapped`` (poolers / predictors),
    ``parity`` (the built-in model's ``state_dict`` loads strictly; detections within
    ``box_atol`` px and ``score_atol``, extra outputs agree: :func:`compare_outputs`), ``train``
    (2 SGD iterations, finite losses), ``infer`` (after training). ``poolers`` / ``predictors``:
    what the built-in model has; ``outputs``: the instance fields compared.
    """
    torch.manual_seed(0)
    ref = build_builtin().eval()
    prepare(ref)
    row = {"poolers": len(distinct_modules(ref, ROIPooler)),
           "predictors": len([n for n, m in ref.named_modules() if type(m) in _PREDICTORS])}
    state = ref.state_dict()
    images = batch(100, train=False)
    with torch.no_grad():
        expected = ref(images)
    row["outputs"] = sorted(expected[0]["instances"].get_fields())
    for sampler in samplers:
        res = {}
        try:
            torch.manual_seed(0)
            model = build_converted(sampler)
            left = leftover_builtin_modules(model)
            poolers = [m for m in model.modules() if isinstance(m, ROIAlignPooler)]
            assert type(model) is type(ref), f"{type(model).__name__}, not {type(ref).__name__}"
            assert not left, f"built-in modules left: {left}"
            assert all(p.sampler == sampler for p in poolers), "a pooler on another sampler"
            res["build"] = "ok"
            predictors = [n for n, m in model.named_modules() if isinstance(m, FastRCNNPredictor)]
            res["swapped"] = f"{len(distinct_modules(model, ROIAlignPooler))} / {len(predictors)}"
            model.load_state_dict(state, strict=True)
            model.eval()
            with torch.no_grad():
                diff = compare_outputs(model(images), expected, atol=box_atol, score_atol=score_atol)
            res["parity"] = "ok" if diff is None else diff
            losses = train_steps(model, None, batch=batch)
            res["train"] = "ok" if all(math.isfinite(v) for v in losses) else f"losses {losses}"
            res["losses"] = losses
            model.eval()
            with torch.no_grad():
                out = model(images)
            res["infer"] = "ok" if all("instances" in o for o in out) else "no instances"
        except Exception as e:  # recorded, the caller reports it
            res["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        row[sampler] = res
    return row


def conversion_ok(row: Dict, samplers=SAMPLERS) -> bool:
    return all(row[s].get(k) == "ok" for s in samplers for k in ("build", "parity", "train", "infer"))


def check_config(name: str, samplers=SAMPLERS, tiny: bool = False, cfg=None) -> Dict:
    """Run the checks of this module's docstring on one model-zoo config (or on ``cfg``)."""
    t0 = time.perf_counter()
    cfg = load_zoo_cfg(name) if cfg is None else cfg
    row = {"config": name, "family": cfg.MODEL.ROI_HEADS.NAME, "plugin": PLUGIN_HEADS.get(cfg.MODEL.ROI_HEADS.NAME, "")}
    reason = skip_reason(cfg)
    if reason:
        return {**row, "skipped": reason, "seconds": time.perf_counter() - t0}
    cfg = shrink(cfg, tiny)
    try:
        torch.manual_seed(0)
        ref = build_model(cfg).eval()
        _tame_residuals(ref)
        _spread_scores(ref)
        state = ref.state_dict()
        images = random_batch(cfg, 100, train=False)
        with torch.no_grad():
            expected = ref(images)
    except Exception as e:  # the built-in model itself does not run here: a failed row, the sweep goes on
        error = f"built-in model: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        return {**row, **{s: {"error": error} for s in samplers}, "seconds": time.perf_counter() - t0}
    for sampler in samplers:
        res = {}
        try:
            pcfg = plugin_swap(cfg, sampler)
            torch.manual_seed(0)
            model = build_model(pcfg)
            left = leftover_builtin_modules(model)
            poolers = [m for m in model.modules() if isinstance(m, ROIAlignPooler)]
            assert not left, f"built-in modules left: {left}"
            assert poolers and all(p.sampler == sampler for p in poolers), "plugin poolers missing"
            res["build"] = "ok"
            model.load_state_dict(state, strict=True)
            model.eval()
            with torch.no_grad():
                diff = compare_outputs(model(images), expected)
            res["parity"] = "ok" if diff is None else diff
            losses = train_steps(model, pcfg)
            res["train"] = "ok" if all(math.isfinite(v) for v in losses) else f"losses {losses}"
            model.eval()
            with torch.no_grad():
                out = model(images)
            res["infer"] = "ok" if all("instances" in o for o in out) else "no instances"
        except Exception as e:  # recorded in the table, the sweep goes on
            res["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        row[sampler] = res
    row["seconds"] = time.perf_counter() - t0
    return row


def row_ok(row: Dict, samplers=SAMPLERS) -> bool:
    return "skipped" not in row and all(
        row[s].get(k) == "ok" for s in samplers for k in ("build", "train", "infer", "parity")
    )


def torch_export_roi_heads(model: nn.Module, image: torch.Tensor) -> Dict[str, str]:
    """Try ``torch.export.export`` (non-strict) of ``model.roi_heads`` at inference through
    :class:`roi_plugin.export.branches.ROIHeadsTensors` on one (3, H, W) image's features and proposals,
    the number of proposals dynamic. Returns ``result`` ("exported, equals eager: ..." or the
    error's type and first line) and ``where`` (the last frame in detectron2 / roi_plugin code)."""
    import traceback

    from roi_plugin.export.branches import ROIHeadsTensors

    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        wrapper = ROIHeadsTensors(model.roi_heads).eval()
        args = ([features[k] for k in wrapper.in_features], proposals[0].proposal_boxes.tensor, images.tensor[0])
        ref = wrapper(*args)
    dynamic = ([None] * len(args[0]), {0: torch.export.Dim("proposals")}, None)
    try:
        program = torch.export.export(wrapper, args, dynamic_shapes=dynamic, strict=False)
    except Exception as e:  # report what fails and where
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "detectron2" in f.filename or "roi_plugin" in f.filename]
        where = f"{frames[-1].filename.split('site-packages/')[-1]}:{frames[-1].lineno}: {frames[-1].line}" if frames else ""
        return {"result": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}", "where": where}
    got = program.module()(*args)
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(got, ref) if b.numel())
    return {"result": f"exported, max diff vs eager {diff:.1e}", "where": ""}
