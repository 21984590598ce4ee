# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The benchmark's pooler cases: the inputs (P2..P5 of 2 images, boxes log-uniform in 16..800
px), the implementations compared, and a closure per (implementation, case, mode) that runs one
pooler call, and its backward, on fixed inputs.

Implementations: Detectron2's ``ROIPooler`` (of the case's pooler type, ``ROIAlignV2`` unless
the case says otherwise: the reference of every ratio), the plugin's ``ROIAlignPooler`` with
each sampler, the ``gather`` one also under ``torch.compile`` and its plan alone, the notebook's
per-ROI design (``notebook.py``), and the other pooler types (issue 29): the plugin's ``ROIPool``
against ``ROIPooler``'s (torchvision's ``roi_pool``), and ``PrRoIPool`` beside ROIAlign at the
same output size (with and without the box gradient)."""
import math
from typing import Callable, List, NamedTuple, Sequence

import torch

from .notebook import NotebookPooler

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
IMPLS = ("detectron2", "gather", "grid_sample")
WITH_COMPILED = ("detectron2", "gather", "gather_compiled", "grid_sample")  # + the compiled pooler
IMPL_NAMES = {
    "detectron2": "Detectron2 `ROIPooler`",
    "gather": "plugin, `gather` sampler (default)",
    "gather_compiled": "plugin, `gather` sampler, `torch.compile` (inductor)",
    "gather_plan": "plugin, `gather` plan alone (what the backward operator rebuilds)",
    "grid_sample": "plugin, `grid_sample` sampler",
    "notebook": "notebook design (per-ROI `expand` + `grid_sample`)",
    "roi_pool": "plugin, `ROIPool`",
    "prroi_pool": "plugin, `PrRoIPool`",
    "prroi_pool_boxes": "plugin, `PrRoIPool`, boxes requiring grad (box gradient too)",
}
IDLE_ONLY = ("grid_sample", "notebook")  # measured in the idle condition only (slow, not the default)
MODES = ("fwd", "fwd+bwd", "infer")  # training forward (grad enabled), forward+backward, no grad


class Case(NamedTuple):
    name: str
    description: str
    output: int
    rois: int  # per image
    ratio: int
    modes: Sequence[str]  # of MODES
    impls: Sequence[str] = IMPLS
    pooler_type: str = "ROIAlignV2"  # of Detectron2's ROIPooler ("detectron2") and the plugin's ROIAlign samplers


def pooler_cases(quick: bool) -> List[Case]:
    """The cases; ``quick`` takes a quarter of the ROIs (and ``image_size`` half the sides)."""
    scale = 4 if quick else 1
    return [
        Case("train_r0", "training, box 7x7, sampling ratio 0", 7, 512 // scale, 0, ("fwd", "fwd+bwd"),
             WITH_COMPILED + ("gather_plan",)),
        Case("train_r2", "training, box 7x7, sampling ratio 2", 7, 512 // scale, 2, ("fwd", "fwd+bwd")),
        Case("infer_r0", "inference, box 7x7, ratio 0, no grad", 7, 1000 // scale, 0, ("infer",), WITH_COMPILED),
        Case("mask_r0", "training, mask 14x14, ratio 0", 14, 64 // scale, 0, ("fwd", "fwd+bwd")),
        Case(
            "notebook", "training, box 7x7, ratio 2, few ROIs", 7, 16 // scale, 2, ("fwd+bwd",),
            ("detectron2", "gather", "notebook"),
        ),
        # issue 29: ROIPool against ROIPooler's ROIPool (torchvision's roi_pool), PrRoIPool beside ROIAlign
        Case("roi_pool_train", "training, box 7x7, ROIPool", 7, 512 // scale, 0, ("fwd", "fwd+bwd"),
             ("detectron2", "roi_pool"), pooler_type="ROIPool"),
        Case("roi_pool_infer", "inference, box 7x7, ROIPool, no grad", 7, 1000 // scale, 0, ("infer",),
             ("detectron2", "roi_pool"), pooler_type="ROIPool"),
        Case("prroi_train", "training, box 7x7, PrRoIPool beside ROIAlignV2 (ratio 0)", 7, 512 // scale, 0,
             ("fwd", "fwd+bwd"), ("detectron2", "gather", "prroi_pool", "prroi_pool_boxes")),
        Case("prroi_infer", "inference, box 7x7, PrRoIPool beside ROIAlignV2 (ratio 0), no grad", 7, 1000 // scale,
             0, ("infer",), ("detectron2", "gather", "prroi_pool")),
    ]


CASE_NAMES = tuple(c.name for c in pooler_cases(False))


def find_case(name: str, quick: bool) -> Case:
    for case in pooler_cases(quick):
        if case.name == name:
            return case
    raise ValueError(f"unknown pooler case {name!r}; the cases are {', '.join(CASE_NAMES)}")


def image_size(quick: bool):
    return (400, 608) if quick else (800, 1216)


def make_features(batch: int, height: int, width: int, device: str, seed: int = 0) -> List[torch.Tensor]:
    """P2..P5 maps (B, 256, ceil(H/s), ceil(W/s)) as an FPN on a padded 800x1216 batch gives."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, 256, math.ceil(height * s), math.ceil(width * s), generator=gen).to(device)
        for s in SCALES
    ]


def make_boxes(batch: int, n: int, height: int, width: int, device: str, seed: int = 1) -> List[torch.Tensor]:
    """n boxes per image, side lengths log-uniform in [16, 800] px (independently per side),
    centres uniform over the image, clipped to it like RPN proposals."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        side = torch.exp(torch.empty(n, 2).uniform_(math.log(16), math.log(800), generator=gen))
        cx, cy = torch.rand(n, generator=gen) * width, torch.rand(n, generator=gen) * height
        b = torch.stack([cx - side[:, 0] / 2, cy - side[:, 1] / 2, cx + side[:, 0] / 2, cy + side[:, 1] / 2], 1)
        b[:, 0::2] = b[:, 0::2].clamp(0, width)
        b[:, 1::2] = b[:, 1::2].clamp(0, height)
        out.append(b.to(device))
    return out


def build_pooler(impl: str, case: Case, image_hw):
    if impl == "detectron2":
        from detectron2.modeling.poolers import ROIPooler

        return ROIPooler(case.output, SCALES, case.ratio, case.pooler_type)
    if impl == "notebook":
        return NotebookPooler(case.output, case.ratio, image_hw)
    from roi_plugin import ROIAlignPooler

    if impl in ("roi_pool", "prroi_pool", "prroi_pool_boxes"):
        pooler_type = "ROIPool" if impl == "roi_pool" else "PrRoIPool"
        return ROIAlignPooler(case.output, SCALES, case.ratio, pooler_type)
    if impl == "gather_compiled":  # default settings; compiled in the warm-up calls
        torch._dynamo.reset()  # a fresh cache per case: no recompile limit across cases
        return torch.compile(ROIAlignPooler(case.output, SCALES, case.ratio, "ROIAlignV2"))
    return ROIAlignPooler(case.output, SCALES, case.ratio, case.pooler_type, sampler=impl)


def make_step(impl: str, case: Case, mode: str, quick: bool, device: str) -> Callable[[], None]:
    """A closure running one pooler call (and its backward) on fixed inputs; ``step.feats``
    are the feature maps (leaves with gradients unless ``mode`` is ``infer``)."""
    from detectron2.structures import Boxes

    height, width = image_size(quick)
    feats = make_features(2, height, width, device)
    boxes = make_boxes(2, case.rois, height, width, device)
    if impl == "gather_plan":  # routing and the plan of the gather operator, on its one thread
        from roi_plugin.layers import roi_align_ops as ops
        from roi_plugin.layers.threads import single_threaded

        rois = build_pooler("gather", case, (height, width))._rois(boxes, feats[0])
        out_hw, sizes = (case.output, case.output), [f.shape for f in feats]

        def plan_step():
            with single_threaded(rois.device):
                r = ops._prepare(rois, 2, feats[0].dtype, SCALES, "ROIAlignV2", 224.0, 4, check=False)
                plans = ops._gather_plan(r, sizes, SCALES, out_hw, case.ratio, "ROIAlignV2", backward=True)
                for _ in plans.transposed():  # built block by block: what the backward operator rebuilds
                    pass

        plan_step.feats = feats
        return plan_step
    pooler = build_pooler(impl, case, (height, width)).to(device)
    box_arg = [Boxes(b) for b in boxes] if impl == "detectron2" else boxes
    if mode != "infer":
        feats = [f.requires_grad_() for f in feats]
        if impl == "prroi_pool_boxes":
            boxes = [b.requires_grad_() for b in boxes]

    def step():
        if mode == "infer":
            with torch.no_grad():
                pooler(feats, box_arg)
            return
        for f in feats + (boxes if impl == "prroi_pool_boxes" else []):  # as zero_grad(set_to_none=True) would
            f.grad = None
        out = pooler(feats, box_arg)
        if mode == "fwd+bwd":
            out.backward(torch.ones_like(out))

    step.feats = feats
    return step
