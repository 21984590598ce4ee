# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Swap roi_plugin's pooler and predictors into any built Detectron2 model: the one mechanism.

:func:`convert_model` walks a built ``nn.Module`` (any attribute, nested modules, ``ModuleList``
/ ``ModuleDict`` entries) and replaces

===============================  ======================================  =======================
Detectron2 module (exact type)   replaced by                             kept
===============================  ======================================  =======================
``ROIPooler``                    :class:`ROIAlignPooler` (``sampler``)   output size, scales,
                                                                         sampling ratio, type
                                                                         (ROIAlign / V2 /
                                                                         Rotated / ROIPool),
                                                                         level rule
``FastRCNNOutputLayers``         :class:`FastRCNNPredictor`              settings; the very
``RotatedFastRCNNOutputLayers``  :class:`RotatedFastRCNNPredictor`       parameter objects
===============================  ======================================  =======================

as ``nn.SyncBatchNorm.convert_sync_batchnorm`` does for batch norms. Subclasses are left alone
(their own behaviour would be lost), as is everything of roi_plugin's. Parameter names do not
change, so a checkpoint of the built-in model loads strictly into the converted one and back.
The plan (:func:`plan_conversion`: every swap, the new modules built, nothing changed) comes
before any change (:func:`apply_conversion`): a module that cannot be converted (a pooler whose
level poolers are not Detectron2's, a module in a plain attribute) raises ``ValueError`` naming
its path with the model untouched. Keywords of :class:`ROIAlignPooler` beyond Detectron2's
(``pool_mode``, ``roi_scale_factor``, ``all_levels``, ``channels``, ``all_levels_kernel``, and
``pooler_type`` to replace every pooler's type, e.g. ``"PrRoIPool"``) apply to every converted
pooler; ``pooler_types={path: type}`` sets the type of the pooler at that path only. A module reachable at several
paths gets one replacement, shared at all of them. The predictors are built on the meta device
and take over the old parameters (``load_state_dict(assign=True)``): no RNG is drawn, device,
dtype and ``requires_grad`` are those of the old ones.

Every route uses it: the plugin ROI heads convert themselves after Detectron2's ``__init__``
(:mod:`.roi_heads`), ``MODEL.META_ARCHITECTURE: "ROIPluginModel"`` converts the whole model
(:mod:`.meta_arch`), and a LazyConfig of any model ends with one line::

    model = L(convert_model)(model=model, sampler="gather")

after which command-line overrides of the model go under ``model.model.`` (e.g.
``model.model.roi_heads.num_classes=3``); an old ``model.roi_heads...`` path is not ignored:
``instantiate`` raises ``TypeError`` (``convert_model`` takes no such keyword).
:func:`apply_plugin_keys` applies the ``MODEL.ROI_PLUGIN`` keys Detectron2's builders do not
know to freshly built modules, for the two cfg routes.
"""
import logging
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from torchvision.ops import RoIPool

from detectron2.layers import ROIAlign, ROIAlignRotated, ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.rotated_fast_rcnn import RotatedFastRCNNOutputLayers

from ..config import roi_plugin_cfg
from .poolers import SAMPLERS, ROIAlignPooler
from .predictor import FastRCNNPredictor, RotatedFastRCNNPredictor

__all__ = [
    "convert_model", "plan_conversion", "apply_conversion", "Swap", "apply_plugin_keys",
    "pooler_from_roi_pooler", "predictor_from_output_layers", "cfg_for_detectron2", "head_pooler_types",
    "plugin_pooler_options",
]

# Under Detectron2's logger, so that the summary shows in any Detectron2 script's log.
logger = logging.getLogger("detectron2.roi_plugin")

# Detectron2's own values of the settings MODEL.ROI_PLUGIN can change (ROIPooler's level rule,
# FastRCNNOutputLayers' init std).
_D2_CANONICAL = (224, 4)
_D2_INIT_STD = (0.01, 0.001)


def pooler_from_roi_pooler(pooler: ROIPooler, sampler: str = "gather", single_thread: bool = True,
                           **options) -> ROIAlignPooler:
    """An :class:`ROIAlignPooler` with the output size, scales, sampling ratio, pooler type
    (``ROIAlign``, ``ROIAlignV2``, ``ROIAlignRotated``, ``ROIPool``) and level rule of
    Detectron2's ``pooler``; ``options`` are further :class:`ROIAlignPooler` keywords
    (``pooler_type`` among them replaces the type).

    Raises ``ValueError`` for level poolers that are not Detectron2's (or torchvision's ``RoIPool``).
    """
    first = pooler.level_poolers[0]
    sampling_ratio = 0
    if type(first) is ROIAlign:
        pooler_type = "ROIAlignV2" if first.aligned else "ROIAlign"
        sampling_ratio = int(first.sampling_ratio)
    elif type(first) is ROIAlignRotated:
        pooler_type = "ROIAlignRotated"
        sampling_ratio = int(first.sampling_ratio)
    elif type(first) is RoIPool:
        pooler_type = "ROIPool"
    else:
        raise ValueError(
            f"roi_plugin converts ROIPoolers of ROIAlign, ROIAlignV2, ROIAlignRotated and ROIPool; this ROIPooler "
            f"uses {type(first).__name__}"
        )
    options = dict(options)
    pooler_type = options.pop("pooler_type", None) or pooler_type
    return ROIAlignPooler(
        output_size=tuple(pooler.output_size),
        scales=tuple(float(p.spatial_scale) for p in pooler.level_poolers),
        sampling_ratio=sampling_ratio,
        pooler_type=pooler_type,
        canonical_box_size=pooler.canonical_box_size,
        canonical_level=pooler.canonical_level,
        sampler=sampler,
        single_thread=single_thread,
        **options,
    )


def predictor_from_output_layers(layers: FastRCNNOutputLayers) -> FastRCNNPredictor:
    """A :class:`FastRCNNPredictor` (:class:`RotatedFastRCNNPredictor` for
    ``RotatedFastRCNNOutputLayers``) with the settings of ``layers`` and its parameter and buffer
    objects themselves (same values, device, dtype, ``requires_grad``); draws no random numbers."""
    box_dim = len(layers.box2box_transform.weights)
    kwargs = dict(
        box2box_transform=layers.box2box_transform,
        num_classes=layers.num_classes,
        test_score_thresh=layers.test_score_thresh,
        test_nms_thresh=layers.test_nms_thresh,
        test_topk_per_image=layers.test_topk_per_image,
        cls_agnostic_bbox_reg=layers.bbox_pred.out_features == box_dim,
        smooth_l1_beta=layers.smooth_l1_beta,
        box_reg_loss_type=layers.box_reg_loss_type,
        loss_weight=dict(layers.loss_weight),
        use_sigmoid_ce=layers.use_sigmoid_ce,
        fed_loss_num_classes=layers.fed_loss_num_classes,
    )
    if layers.use_fed_loss:
        weights = layers.fed_loss_cls_weights
        kwargs.update(use_fed_loss=True, get_fed_loss_cls_weights=lambda: weights)
    cls = RotatedFastRCNNPredictor if isinstance(layers, RotatedFastRCNNOutputLayers) else FastRCNNPredictor
    with torch.device("meta"):  # shapes only: no memory, no RNG
        out = cls(ShapeSpec(channels=layers.cls_score.in_features), **kwargs)
    state = layers.state_dict(keep_vars=True)  # the Parameter objects themselves
    for name, p in out.named_parameters():  # assign=True copies requires_grad from the new module
        p.requires_grad_(state[name].requires_grad)
    out.load_state_dict(state, strict=True, assign=True)
    return out.train(layers.training)


_REPLACED = (ROIPooler, FastRCNNOutputLayers, RotatedFastRCNNOutputLayers)  # exact types


def _replaced(module) -> bool:
    return type(module) in _REPLACED


def _replacement(module: nn.Module, sampler: str, single_thread: bool = True, **options) -> nn.Module:
    """The plugin's module for ``module`` (one of ``_REPLACED``); ``options`` go to the pooler."""
    if type(module) is ROIPooler:
        return pooler_from_roi_pooler(module, sampler, single_thread, **options).train(module.training)
    return predictor_from_output_layers(module)


class Swap(NamedTuple):
    """One module to replace: every path it is reachable at ("" is the root), and both modules."""

    paths: Tuple[str, ...]
    old: nn.Module
    new: nn.Module

    def __str__(self) -> str:
        new = type(self.new).__name__
        if isinstance(self.new, ROIAlignPooler):
            new += f"[{self.new.sampler}]"
        return f"{' = '.join(p or '<root>' for p in self.paths)} ({type(self.old).__name__} -> {new})"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _plain_refs(value, where: str):
    """Modules held in a plain (unregistered) attribute: the value itself, or one level into a
    list, tuple or dict."""
    if isinstance(value, nn.Module):
        yield where, value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if isinstance(v, nn.Module):
                yield f"{where}[{i}]", v
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, nn.Module):
                yield f"{where}[{k!r}]", v


def plan_conversion(model: nn.Module, sampler: str = "gather", single_thread: bool = True, *,
                    pooler_types: Optional[Dict[str, str]] = None, **pooler_options) -> List[Swap]:
    """The swaps :func:`convert_model` would make, the new modules built; ``model`` is not
    changed. Raises ``ValueError`` naming every path that cannot be converted: a pooler the
    plugin cannot build (level poolers of another kind, options it refuses), or a replaceable
    module held in a plain attribute (outside the module tree, where a swap cannot reach it).
    ``pooler_types`` and ``pooler_options``: see :func:`convert_model`."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not supported; use one of {SAMPLERS}")
    found: Dict[int, Tuple[nn.Module, List[str]]] = {}  # id(old) -> (old, its paths)
    errors, scanned = [], set()
    if _replaced(model):
        found[id(model)] = (model, [""])
    # Every route to every module, so a shared module collects all its paths.
    for path, module in model.named_modules(remove_duplicate=False):
        for name, child in module._modules.items():
            if child is not None and _replaced(child):
                found.setdefault(id(child), (child, []))[1].append(_join(path, name))
        if id(module) in scanned:
            continue
        scanned.add(id(module))
        for name, value in vars(module).items():
            if name in ("_modules", "_parameters", "_buffers"):
                continue
            for where, obj in _plain_refs(value, _join(path, name)):
                if _replaced(obj):
                    errors.append(f"{where}: a {type(obj).__name__} in a plain attribute, not a registered "
                                  f"submodule; a swap cannot reach it")
    pooler_types = dict(pooler_types or {})
    swaps = []
    for old, paths in found.values():
        options = dict(pooler_options) if type(old) is ROIPooler else {}
        typed = [pooler_types.pop(p) for p in paths if p in pooler_types]
        if typed and type(old) is ROIPooler:
            options["pooler_type"] = typed[0]
        try:
            new = _replacement(old, sampler, single_thread, **options)
        except ValueError as e:
            errors.append(f"{paths[0] or '<root>'}: {e}")
            continue
        swaps.append(Swap(tuple(paths), old, new))
    errors += [f"{p}: pooler_types names no ROIPooler there" for p in pooler_types]
    if errors:
        raise ValueError(f"roi_plugin cannot convert this {type(model).__name__}; nothing was changed:\n  "
                         + "\n  ".join(errors))
    return swaps


def apply_conversion(model: nn.Module, swaps: Iterable[Swap]) -> nn.Module:
    """Put each swap's new module at all its paths; returns the model (the new module itself
    when the root was replaced)."""
    for swap in swaps:
        for path in swap.paths:
            if not path:
                model = swap.new
                continue
            parent_path, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent_path), name, swap.new)
    return model


def convert_model(model: nn.Module, sampler: str = "gather", single_thread: bool = True, *,
                  pooler_types: Optional[Dict[str, str]] = None, **pooler_options) -> nn.Module:
    """Replace every Detectron2 ``ROIPooler`` of ``model`` by an :class:`ROIAlignPooler` with
    the same settings and the given ``sampler`` (``"gather"`` or ``"grid_sample"``) and
    ``single_thread`` (``MODEL.ROI_PLUGIN.SINGLE_THREAD``, see :class:`ROIAlignPooler`), and every
    plain ``FastRCNNOutputLayers`` / ``RotatedFastRCNNOutputLayers`` by roi_plugin's predictor
    with the same parameters (see the module docstring).

    Args:
        pooler_types: ``{path: pooler_type}``, e.g. ``{"roi_heads.box_pooler": "PrRoIPool"}``:
            the type of the pooler converted at that path (a path naming no ``ROIPooler`` is an error).
        pooler_options: further :class:`ROIAlignPooler` keywords for every converted pooler:
            ``pool_mode``, ``roi_scale_factor``, ``all_levels`` (with ``channels`` for ``"conv"``),
            ``all_levels_kernel``, or ``pooler_type`` (every pooler's type).

    Returns the model, converted in place (a new module only when ``model`` itself is a
    replaced one). Idempotent: a converted model has nothing left to convert. Logs one line
    listing the swapped paths; :func:`plan_conversion` returns the same list without changing
    anything. Raises ``ValueError`` (model unchanged) for what cannot be converted.
    """
    swaps = plan_conversion(model, sampler, single_thread, pooler_types=pooler_types, **pooler_options)
    model = apply_conversion(model, swaps)
    line = f"roi_plugin: converted {len(swaps)} module(s) of {type(model).__name__}"
    line += (": " + "; ".join(map(str, swaps))) if swaps else " (nothing left to convert)"
    kept = [n or "<root>" for n, m in model.named_modules()
            if isinstance(m, _REPLACED) and not _replaced(m) and not isinstance(m, (ROIAlignPooler, FastRCNNPredictor))]
    if kept:  # their own behaviour would be lost
        line += f"; subclasses left as they are: {', '.join(kept)}"
    logger.info(line)
    return model


def apply_plugin_keys(modules: Iterable, cfg) -> None:
    """Apply the ``MODEL.ROI_PLUGIN`` keys that Detectron2's builders do not read to the
    Detectron2 modules just built from ``cfg`` (before :func:`convert_model`).

    A key at its default leaves the module as Detectron2 built it (Detectron2's own values):
    ``CANONICAL_BOX_SIZE`` / ``CANONICAL_LEVEL`` other than 224 / 4 set that constant of every
    ``ROIPooler``'s level rule; ``CLS_SCORE_INIT_STD`` / ``BBOX_PRED_INIT_STD`` other than 0.01 / 0.001 draw
    that layer of every plain predictor again (normal, that std; the bias stays 0). So a default
    config builds exactly the built-in model's values under the same seed.

    Args:
        modules: modules, or lists of modules (e.g. the values of a ``from_config`` dict).
    """
    plugin = roi_plugin_cfg(cfg)
    canonical = (plugin.CANONICAL_BOX_SIZE, plugin.CANONICAL_LEVEL)
    stds = (plugin.CLS_SCORE_INIT_STD, plugin.BBOX_PRED_INIT_STD)
    roots = []
    for m in modules:
        roots += [x for x in (m if isinstance(m, (list, tuple)) else [m]) if isinstance(x, nn.Module)]
    done = set()
    for root in roots:
        for m in root.modules():
            if id(m) in done or not _replaced(m):
                continue
            done.add(id(m))
            if isinstance(m, ROIPooler):
                if canonical[0] != _D2_CANONICAL[0]:
                    m.canonical_box_size = canonical[0]
                if canonical[1] != _D2_CANONICAL[1]:
                    m.canonical_level = canonical[1]
            elif isinstance(m, FastRCNNOutputLayers):
                for layer, std, d2_std in zip((m.cls_score, m.bbox_pred), stds, _D2_INIT_STD):
                    if std != d2_std:
                        nn.init.normal_(layer.weight, std=std)


# Pooler types the plugin pools that Detectron2's ROIPooler refuses: its builders get a placeholder.
_PLUGIN_ONLY_TYPES = ("PrRoIPool",)
_PLACEHOLDER_TYPE = "ROIAlignV2"
# Detectron2's head config -> attribute of its ROI heads that holds the pooler built from it.
_HEAD_POOLERS = {"ROI_BOX_HEAD": ("box_pooler", "pooler"), "ROI_MASK_HEAD": ("mask_pooler",),
                 "ROI_KEYPOINT_HEAD": ("keypoint_pooler",)}


def cfg_for_detectron2(cfg):
    """``(cfg Detectron2's builders can read, {head config: plugin-only pooler type})``: a head's
    ``POOLER_TYPE`` of the plugin only (``PrRoIPool``) becomes a placeholder in a clone of ``cfg``
    (Detectron2's ``ROIPooler`` would raise on it); :func:`head_pooler_types` puts it back at
    conversion. ``cfg`` itself when no head names such a type."""
    wanted = {head: cfg.MODEL[head].POOLER_TYPE for head in _HEAD_POOLERS
              if head in cfg.MODEL and cfg.MODEL[head].get("POOLER_TYPE") in _PLUGIN_ONLY_TYPES}
    if not wanted:
        return cfg, {}
    clone = cfg.clone()
    clone.defrost()
    for head in wanted:
        clone.MODEL[head].POOLER_TYPE = _PLACEHOLDER_TYPE
    if cfg.is_frozen():
        clone.freeze()
    return clone, wanted


def head_pooler_types(wanted: Dict[str, str], roi_heads: nn.Module, prefix: str = "") -> Dict[str, str]:
    """``convert_model``'s ``pooler_types`` for the poolers :func:`cfg_for_detectron2` replaced:
    the path (under ``prefix``) of each head's pooler in ``roi_heads``, where it holds an ``ROIPooler``."""
    out = {}
    for head, pooler_type in wanted.items():
        for name in _HEAD_POOLERS[head]:
            if type(getattr(roi_heads, name, None)) is ROIPooler:
                out[_join(prefix, name)] = pooler_type
    return out


def plugin_pooler_options(cfg, channels: Optional[int] = None) -> Dict[str, object]:
    """The :class:`ROIAlignPooler` keywords of ``MODEL.ROI_PLUGIN`` (``ALL_LEVELS``,
    ``ALL_LEVELS_KERNEL``, ``POOL_MODE``, ``ROI_SCALE_FACTOR``) for every pooler the cfg routes
    convert; ``channels`` (the pooled maps' channels) is needed by ``ALL_LEVELS: "conv"``."""
    plugin = roi_plugin_cfg(cfg)
    options = {}
    if plugin.ALL_LEVELS:
        options.update(all_levels=plugin.ALL_LEVELS, all_levels_kernel=plugin.ALL_LEVELS_KERNEL)
        if plugin.ALL_LEVELS == "conv":
            if not channels:
                raise ValueError('MODEL.ROI_PLUGIN.ALL_LEVELS "conv" needs the channels of the pooled maps, '
                                 "which this model does not tell")
            options["channels"] = channels
    if plugin.POOL_MODE != "avg":
        options["pool_mode"] = plugin.POOL_MODE
    if plugin.ROI_SCALE_FACTOR != 1.0:
        options["roi_scale_factor"] = plugin.ROI_SCALE_FACTOR
    return options
