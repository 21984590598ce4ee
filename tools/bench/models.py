# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The benchmark's whole-model cases: one training iteration and one inference pass of a Mask
R-CNN config with roi_plugin's heads (``PluginROIHeads`` + ``TwoMLPHead``, sampler ``gather``)
against the same config with the built-in heads (``StandardROIHeads`` + ``FastRCNNConvFCHead``),
identical weights (random init) and input, and of the plugin model with
``torch.compile(model.roi_heads)``; the three timed interleaved (``tools/timing.py``)."""
import copy
import math
import os
import sys
from typing import Dict, List, NamedTuple, Sequence

import torch

from timing import interleaved

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ModelCase(NamedTuple):
    key: str  # the name --models takes
    title: str
    config: str  # relative to the repo
    train_batch: int
    image_hw: Sequence[int]
    quick_hw: Sequence[int]
    reps: int  # repetitions unless --model-reps (--quick: 1)
    idle_only: bool  # measured in the idle condition only (minutes per condition)


MODEL_CASES = (
    ModelCase("r50", "Mask R-CNN R50-FPN", "configs/mask_rcnn_R_50_FPN_1x_plugin.yaml", 2, (800, 1216), (320, 480),
              reps=3, idle_only=True),
    # The demo's model: small backbone and images, where the ROI heads are a large share of the time.
    ModelCase("shapes", "Mask R-CNN R18-FPN (GroupNorm), the shapes demo's model",
              "configs/shapes/mask_rcnn_plugin.yaml", 4, (256, 256), (256, 256), reps=7, idle_only=False),
)
MODEL_KEYS = {m.key: m for m in MODEL_CASES}
VARIANTS = ("builtin", "plugin", "plugin_compiled")  # the models timed, in the order of interleaving


def build_models(case: ModelCase, device: str):
    """``case.config`` with the plugin heads and with the built-in heads, same weights."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from roi_plugin import add_roi_plugin_config

    def cfg_for(plugin: bool):
        cfg = get_cfg()
        add_roi_plugin_config(cfg)
        cfg.merge_from_file(os.path.join(REPO, case.config))
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.DEVICE = device
        cfg.MODEL.ROI_HEADS.NAME = "PluginROIHeads" if plugin else "StandardROIHeads"
        cfg.MODEL.ROI_BOX_HEAD.NAME = "TwoMLPHead" if plugin else "FastRCNNConvFCHead"
        cfg.MODEL.ROI_PLUGIN.SAMPLER = "gather"
        return cfg

    torch.manual_seed(0)
    plugin_cfg = cfg_for(True)
    plugin = build_model(plugin_cfg)
    builtin = build_model(cfg_for(False))
    missing, unexpected = builtin.load_state_dict(plugin.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"plugin/built-in state dicts differ: missing {missing}, unexpected {unexpected}")
    return plugin, builtin, plugin_cfg.MODEL.ROI_HEADS.NUM_CLASSES


def model_inputs(height: int, width: int, device: str, batch: int, num_classes: int):
    from detectron2.structures import BitMasks, Boxes, Instances

    gen = torch.Generator().manual_seed(2)
    inputs = []
    for _ in range(batch):
        image = (torch.rand(3, height, width, generator=gen) * 255).to(device)
        n = 8
        lo = min(32.0, min(height, width) / 16)
        side = torch.exp(torch.empty(n, 2).uniform_(math.log(lo), math.log(min(height, width) / 2), generator=gen))
        x1 = torch.rand(n, generator=gen) * (width - side[:, 0])
        y1 = torch.rand(n, generator=gen) * (height - side[:, 1])
        boxes = torch.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], 1)
        masks = torch.zeros(n, height, width, dtype=torch.bool)
        for i, (a, b, c, d) in enumerate(boxes.round().long().tolist()):
            masks[i, b:d, a:c] = True
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(boxes.to(device))
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=gen).to(device)
        inst.gt_masks = BitMasks(masks.to(device))
        inputs.append({"image": image, "height": height, "width": width, "instances": inst})
    return inputs


def model_bench(case: ModelCase, quick: bool, device: str, reps: int,
                variants=VARIANTS) -> Dict[str, Dict[str, List[float]]]:
    """``{pass: {variant: seconds per repetition}}`` for the training and the inference pass of
    ``variants`` (of :data:`VARIANTS`), each after one warm-up call of every variant (which
    compiles ``plugin_compiled``)."""
    from detectron2.utils.events import EventStorage

    plugin, builtin, num_classes = build_models(case, device)
    height, width = case.quick_hw if quick else case.image_hw
    train_in = model_inputs(height, width, device, case.train_batch, num_classes)
    infer_in = [{k: v for k, v in d.items() if k != "instances"}
                for d in model_inputs(height, width, device, 1, num_classes)]

    def train_step(model):
        def step():
            model.train()
            model.zero_grad(set_to_none=True)
            torch.manual_seed(3)  # same proposal sampling in both models
            with EventStorage(0):  # training-mode heads log statistics there
                losses = model(train_in)
            sum(losses.values()).backward()
        return step

    def infer_step(model):
        def step():
            model.eval()
            with torch.no_grad():
                model(infer_in)
        return step

    # The plugin model with torch.compile(model.roi_heads) (default settings, compiled in the warm-up).
    models = {"builtin": builtin, "plugin": plugin}
    if "plugin_compiled" in variants:
        torch._dynamo.reset()
        models["plugin_compiled"] = copy.deepcopy(plugin)
        models["plugin_compiled"].roi_heads = torch.compile(models["plugin_compiled"].roi_heads)
    train = interleaved({v: train_step(models[v]) for v in variants}, reps, 1, device)
    print(f"[model] {case.title}: inference", file=sys.stderr, flush=True)
    infer = interleaved({v: infer_step(models[v]) for v in variants}, reps, 1, device)
    return {f"train ({case.train_batch} images, fwd+bwd)": train, "inference (1 image)": infer}


