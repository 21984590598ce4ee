#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Benchmark roi_plugin's ROIAlignPooler against Detectron2's ROIPooler, and whole Mask R-CNN,
on an idle and on a busy machine.

Measures, side by side in one process and after warm-up, in each of three conditions:

* ``1 thread``: ``torch.set_num_threads(1)``;
* ``2 threads, idle``: ``torch.set_num_threads(2)``, nothing else running;
* ``2 threads, busy core``: ``torch.set_num_threads(2)`` while a process started by this
  script spins on one core (what a data-loader worker, an evaluator or another job does to a
  training process), stopped at the end of the condition;

the pooler, forward and forward+backward, for training (2 images 800x1216, P2..P5 with 256
channels, 512 ROIs per image with log-uniform sizes 16..800 px, sampling ratio 0 and 2),
inference (1000 ROIs per image, no grad, ratio 0) and the mask pooler (14x14, 64 ROIs per
image), the default ``gather`` sampler against Detectron2's ``ROIPooler`` (``ROIAlignV2``),
with peak memory of each case (each in a process of its own: growth of the resident set
high-water mark over the state after warm-up; CUDA: ``torch.cuda.max_memory_allocated``); the
``grid_sample`` sampler and the notebook's per-ROI ``expand`` design in the idle condition;
one training iteration and one inference pass of the shapes demo's Mask R-CNN R18-FPN with
roi_plugin's heads (``PluginROIHeads`` + ``TwoMLPHead``) against the built-in heads
(``StandardROIHeads`` + ``FastRCNNConvFCHead``), same weights and input, in every
condition, and of R50-FPN at 800x1216 in the idle one.

Repetitions of the implementations being compared are interleaved (A B C, B C A, ...) so that
load from other processes hits all of them alike; ratios are the median of per-repetition
ratios. Writes ``BENCHMARKS.md`` (``--out``) with a table per condition and the targets.

Usage::

    python tools/benchmark.py              # full run (~15-20 min on 2 CPU cores), writes BENCHMARKS.md
    python tools/benchmark.py --quick      # smaller sizes, a few minutes, prints the tables only
    python tools/benchmark.py --profile gather:train_r2:fwd+bwd --condition busy   # a profile
"""
import argparse
import copy
import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
}


class Condition(NamedTuple):
    name: str
    title: str
    threads: int
    busy: bool  # a spinning process holds one core meanwhile


CONDITIONS = {
    "1thread": Condition("1thread", "1 thread", 1, False),
    "idle": Condition("idle", "2 threads, idle machine", 2, False),
    "busy": Condition("busy", "2 threads, one core busy with another process", 2, True),
}
IDLE_ONLY = ("grid_sample", "notebook")  # measured in the idle condition only (slow, not the default)

# Targets of the default pooler (gather) / ROIPooler, in every condition (issue 13).
TARGETS = [
    ("training fwd+bwd, ratio 0", ("train_r0", "fwd+bwd"), 0.3),
    ("training fwd+bwd, ratio 2", ("train_r2", "fwd+bwd"), 0.3),
    ("inference", ("infer_r0", "infer"), 0.4),
    ("mask 14x14 fwd+bwd", ("mask_r0", "fwd+bwd"), 0.4),
]
MEMORY_TARGET = 1.1  # peak extra memory / ROIPooler's, forward-only and forward+backward
MODEL_TARGET = 0.95  # shapes R18-FPN training iteration, plugin / built-in heads, busy core


class busy_core:
    """Context manager: a process spinning on one core while the block runs."""

    def __init__(self, busy: bool):
        self.busy, self.proc = busy, None

    def __enter__(self):
        if self.busy:
            self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)  # let it take its core
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


class Case(NamedTuple):
    name: str
    description: str
    output: int
    rois: int  # per image
    ratio: int
    modes: Sequence[str]  # "fwd" (grad enabled, training forward), "fwd+bwd", "infer" (no grad)
    impls: Sequence[str] = IMPLS


def pooler_cases(quick: bool) -> List[Case]:
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
    ]


# ---------------------------------------------------------------------------- inputs
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


class NotebookPooler(torch.nn.Module):
    """The notebook's design, for timing only (not exact ROIAlign): per level, every ROI gets
    its own ``expand`` of its image's feature map and one ``grid_sample`` (``align_corners=True``,
    coordinates normalised by the *image* size), then an average over the ratio x ratio samples
    of each bin. Its backward materialises one level-sized gradient per ROI."""

    def __init__(self, output: int, ratio: int, image_hw):
        super().__init__()
        self.output, self.ratio, self.image_hw = output, ratio, image_hw

    def forward(self, x, boxes):
        from detectron2.modeling.poolers import assign_boxes_to_levels
        from detectron2.structures import Boxes

        level_of = assign_boxes_to_levels([Boxes(b) for b in boxes], 2, 5, 224, 4)
        all_boxes = torch.cat(boxes)
        batch = torch.cat([torch.full((len(b),), i) for i, b in enumerate(boxes)])
        g = self.output * self.ratio
        out = x[0].new_zeros((len(all_boxes), x[0].shape[1], self.output, self.output))
        t = (torch.arange(g, dtype=x[0].dtype) + 0.5) / g
        h_img, w_img = self.image_hw
        for level, feat in enumerate(x):
            idx = (level_of == level).nonzero().flatten()
            if idx.numel() == 0:
                continue
            b = all_boxes[idx]
            xs = b[:, 0:1] + (b[:, 2:3] - b[:, 0:1]) * t  # (n, g) image pixels
            ys = b[:, 1:2] + (b[:, 3:4] - b[:, 1:2]) * t
            grid = torch.stack(
                torch.broadcast_tensors((xs / w_img * 2 - 1)[:, None, :], (ys / h_img * 2 - 1)[:, :, None]), -1
            )
            per_roi = feat[batch[idx]]  # one copy of the level map per ROI (the notebook's expand)
            samples = F.grid_sample(per_roi, grid, align_corners=True)
            out[idx] = F.avg_pool2d(samples, self.ratio)
        return out


def build_pooler(impl: str, case: Case, image_hw):
    if impl == "detectron2":
        from detectron2.modeling.poolers import ROIPooler

        return ROIPooler(case.output, SCALES, case.ratio, "ROIAlignV2")
    if impl == "notebook":
        return NotebookPooler(case.output, case.ratio, image_hw)
    from roi_plugin import ROIAlignPooler

    if impl == "gather_compiled":  # default settings; compiled in the warm-up calls
        torch._dynamo.reset()  # a fresh cache per case: no recompile limit across cases
        return torch.compile(ROIAlignPooler(case.output, SCALES, case.ratio, "ROIAlignV2"))
    return ROIAlignPooler(case.output, SCALES, case.ratio, "ROIAlignV2", sampler=impl)


def make_step(impl: str, case: Case, mode: str, quick: bool, device: str) -> Callable[[], None]:
    """A closure running one pooler call (and its backward) on fixed inputs."""
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
                ops._gather_plan(r, sizes, SCALES, out_hw, case.ratio, "ROIAlignV2")

        plan_step.feats = feats
        return plan_step
    pooler = build_pooler(impl, case, (height, width)).to(device)
    box_arg = [Boxes(b) for b in boxes] if impl == "detectron2" else boxes
    if mode != "infer":
        feats = [f.requires_grad_() for f in feats]

    def step():
        if mode == "infer":
            with torch.no_grad():
                pooler(feats, box_arg)
            return
        for f in feats:  # as optimizer.zero_grad(set_to_none=True) would
            f.grad = None
        out = pooler(feats, box_arg)
        if mode == "fwd+bwd":
            out.backward(torch.ones_like(out))

    step.feats = feats
    return step


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(steps: Dict[str, Callable[[], None]], reps: int, warmup: int, device: str) -> Dict[str, List[float]]:
    """Times each step ``reps`` times, rotating the order every repetition."""
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    sync(device)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            gc.collect()
            sync(device)
            t0 = time.perf_counter()
            steps[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------------------- memory
def _rss_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory_here(impl: str, case_name: str, mode: str, quick: bool, device: str) -> float:
    """Peak extra memory (MB) of one step after warm-up, measured in this process."""
    case = {c.name: c for c in pooler_cases(quick)}[case_name]
    step = make_step(impl, case, mode, quick, device)
    step()
    step()
    for f in step.feats:  # the state a training step starts from: no gradients held
        f.grad = None
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # With a fixed mmap threshold (set by the parent) every large block is mmap'ed and
    # unmapped on free, so the resident set follows live memory; writing 5 to clear_refs
    # resets the high-water mark (VmHWM) to the current resident set.
    base = _rss_status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    return (_rss_status("VmHWM") - base) / 2**20


def measure_memory(impl: str, case: Case, mode: str, quick: bool, device: str, threads: int) -> Optional[float]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [
        sys.executable, os.path.abspath(__file__), "--_memory", f"{impl}:{case.name}:{mode}",
        "--threads", str(threads), "--device", device,
    ] + (["--quick"] if quick else [])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        print(res.stderr[-2000:], file=sys.stderr)
        return None
    return float(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- model
class ModelCase(NamedTuple):
    title: str
    config: str  # relative to the repo
    train_batch: int
    image_hw: Sequence[int]
    quick_hw: Sequence[int]


MODEL_CASES = (
    ModelCase("Mask R-CNN R50-FPN", "configs/mask_rcnn_R_50_FPN_1x_plugin.yaml", 2, (800, 1216), (320, 480)),
    # The demo's model: small backbone and images, where the ROI heads are a large share of the time.
    ModelCase("Mask R-CNN R18-FPN (GroupNorm), the shapes demo's model", "configs/shapes/mask_rcnn_plugin.yaml",
              4, (256, 256), (256, 256)),
)


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


def model_bench(case: ModelCase, quick: bool, device: str, reps: int):
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
    torch._dynamo.reset()
    compiled = copy.deepcopy(plugin)
    compiled.roi_heads = torch.compile(compiled.roi_heads)
    train = interleaved({"builtin": train_step(builtin), "plugin": train_step(plugin),
                         "plugin_compiled": train_step(compiled)}, reps, 1, device)
    print(f"[model] {case.title}: inference", file=sys.stderr, flush=True)
    infer = interleaved({"builtin": infer_step(builtin), "plugin": infer_step(plugin),
                         "plugin_compiled": infer_step(compiled)}, reps, 1, device)
    return {f"train ({case.train_batch} images, fwd+bwd)": train, "inference (1 image)": infer}


# ---------------------------------------------------------------------------- report
def fmt_t(ts: List[float]) -> str:
    return f"{statistics.median(ts) * 1e3:.0f} ({min(ts) * 1e3:.0f}-{max(ts) * 1e3:.0f})"


def ratio(ts: List[float], ref: List[float]) -> float:
    return statistics.median([a / b for a, b in zip(ts, ref)])


def machine_info(device: str) -> List[str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import detectron2
    import torchvision

    lines = [
        f"- machine: {cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, detectron2 "
        f"{detectron2.__version__}, Python {platform.python_version()}",
        f"- device: {device}",
    ]
    if device.startswith("cuda"):
        lines.append(f"- GPU: {torch.cuda.get_device_name()}")
    return lines


NOTES = """## What the time goes to (torch.profiler)

`python tools/benchmark.py --profile gather:train_r2:fwd+bwd` profiles one step of a case in
each condition (any `IMPL:CASE:MODE`); `results/profile_gather.md` holds the profiles of the
four headline cases before and after the changes below, and of `ROIPooler`, in all three
conditions.

- **Before** (commit 3d9ac33): the plan was built per level and per power-of-two grid-size
  group (a few hundred small tensor ops per group and level: index arithmetic, `nonzero`,
  `cat`), ~25,000 op calls for one training step at sampling ratio 0 and ~24,000 for the
  inference call, most of them large enough to run as 2-thread OpenMP regions. On an idle
  machine the second thread paid (0.55-0.86x the 1-thread time); with one core taken by another process each region waits for the
  thread that shares that core, and the same calls took 1.2-1.7x their 1-thread time and 1.4-2.4x their idle 2-thread time, while
  torchvision's single-threaded `roi_align` behind `ROIPooler` did not care.
- **Now**: (1) `layers/axis_taps.py` lists the taps of all ROIs of a call along each axis as
  flat lists (only samples on the map, zero taps dropped), and `upright_gather_plan` builds
  every bag as the product of its row's y-taps and column's x-taps with a fixed number of ops
  and `index_select`s: ~2,700 op calls for the inference call, ~5,700 for a training step
  (mostly the per-chunk copies); the sums are bit-identical to the grouped plan's.
  (2) The sampler's ops run on one intra-op thread (`layers/threads.py`), so its time is the
  same whichever condition, and so are the ratios. (3) The channel chunk (8-64 channels) and
  blocks of ROIs per `embedding_bag` come from a memory budget: the taps plus one chunk's table
  and bins stay within 0.6x of the output (forward-only peaks were 1.4x-1.6x `ROIPooler`'s);
  the backward's chunk within a tenth of the feature gradients it returns. (4) Touched-row
  detection with `bincount` instead of an `index_put_` over all taps.
- **What remains and why**: layout copies, ~50-60 % of a training step: the NCHW -> rows
  transposes of the forward (a sum over rows needs channels-last rows) and the rows -> NCHW
  transposes of the backward (the FPN wants an NCHW gradient), plus the first touch of the
  freshly allocated output and gradients (page faults, which `ROIPooler` pays as well in its
  `fill_`). They run at memory speed on one thread; two threads would halve them on an idle
  machine but make them wait on a busy one, which is what this issue is about. Then
  `embedding_bag` (20-25 %) and the sort of the taps by row for the backward (~5 %).
- **Whole model**: in the shapes demo's R18-FPN training step (4 images 256x256) the built-in
  heads spend ~0.2 s in `torchvision::roi_align` forward and backward under the busy-core
  condition, ~6 % of a ~3.5 s step whose convolutions (`convolution_backward`,
  `mkldnn_convolution`, ~75 %) slow down 3x on a busy core for both heads alike; the plugin's
  pooler takes ~60 ms there. So the whole-step ratio can be no better than ~0.94x, and this
  machine's noise (+-5 % between runs) is of the same size: the tables give the medians.
  In R50-FPN at 800x1216 the convolutions are ~85 % and the ratio is ~1.0x within noise.
- The `grid_sample` sampler lays the sample points of all ROIs of a level, whatever their
  adaptive grid sizes, out in one flat list per image, samples them with one `grid_sample` call
  and sums each bin's samples with one `scatter_add`. Before, it made one call per power-of-two
  grid size, and each `grid_sampler_2d_backward` zero-fills and returns a gradient the size of the
  level: at ratio 0 (several calls on P2) that cost 1.72x `ROIPooler`'s time, and the mask case
  2.06x time and 1.65x memory. One call per level brings the mask case to 1.0x-1.2x time and 1.17x memory; with 2 x
  512 box ROIs all samples at once would be ~3x `ROIPooler`'s memory (the (B, C, points) samples
  exist twice), so there calls hold at most a quarter of the level's positions each: ~1.4x time,
  1.65x memory, the floor for several calls, since autograd holds two level-sized gradients while
  it sums them. It is kept for ONNX export (`GridSample` is a standard operator), not for speed.
"""


def pooler_section(args, cond: Condition, headline: Dict) -> List[str]:
    """The pooler table of one condition (run inside it)."""
    quick, device = args.quick, args.device
    reps = args.reps or (3 if quick else 7)
    md = [
        "| case | mode | implementation | time ms | ratio | peak extra MB | memory ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in pooler_cases(quick):
        if args.cases and case.name not in args.cases:
            continue
        impls = [i for i in case.impls if cond.name == "idle" or i not in IDLE_ONLY]
        if len(impls) < 2:
            continue
        for mode in case.modes:
            print(f"[{cond.name}] pooler {case.name} {mode}", file=sys.stderr, flush=True)
            steps = {impl: make_step(impl, case, mode, quick, device) for impl in impls}
            times = interleaved(steps, reps, 1 if quick else 2, device)
            del steps
            gc.collect()
            mem = {}
            # --quick measures memory for the headline case only (each one is a process start).
            if not args.no_memory and (not quick or (case.name, mode) == ("train_r0", "fwd+bwd")):
                for impl in impls:
                    mem[impl] = measure_memory(impl, case, mode, quick, device, cond.threads)
            for impl in impls:
                r = ratio(times[impl], times["detectron2"])
                m, m_ref = mem.get(impl), mem.get("detectron2")
                m_ratio = m / m_ref if m is not None and m_ref else None
                md.append(
                    f"| {case.description}, {case.rois} ROIs/image | {mode} | {IMPL_NAMES[impl]} | "
                    f"{fmt_t(times[impl])} | {r:.2f}x | {'-' if m is None else f'{m:.0f}'} | "
                    f"{'-' if m_ratio is None else f'{m_ratio:.2f}x'} |"
                )
                headline[(cond.name, case.name, mode, impl)] = (r, m_ratio)
    return md


def model_section(args, cond: Condition, mcase: ModelCase, headline: Dict) -> List[str]:
    quick, device = args.quick, args.device
    print(f"[{cond.name}] model {mcase.title}", file=sys.stderr, flush=True)
    mreps = args.model_reps or (1 if quick else (3 if mcase.image_hw[0] > 400 else 7))
    res = model_bench(mcase, quick, device, mreps)
    mh, mw = mcase.quick_hw if quick else mcase.image_hw
    md = [
        f"`{mcase.config}` (random init, no weights) with the plugin heads "
        f"(`PluginROIHeads`, `TwoMLPHead`, sampler `gather`) vs the same config with "
        f"`StandardROIHeads` + `FastRCNNConvFCHead`; identical weights, random {mh}x{mw} images with "
        f"8 boxes/masks each, {mreps} repetition(s) after one warm-up, interleaved.",
        "",
        "| pass | built-in heads ms | plugin heads ms | ratio plugin / built-in |",
        "| --- | --- | --- | --- |",
    ]
    for name, t in res.items():
        r = ratio(t["plugin"], t["builtin"])
        md.append(f"| {name} | {fmt_t(t['builtin'])} | {fmt_t(t['plugin'])} | {r:.2f}x |")
        headline[(cond.name, "model", mcase.config, name.split(" ")[0])] = (r, None)
        rc = ratio(t["plugin_compiled"], t["builtin"])
        md.append(f"| {name}, plugin `torch.compile(model.roi_heads)` | {fmt_t(t['builtin'])} | "
                  f"{fmt_t(t['plugin_compiled'])} | {rc:.2f}x |")
    return md


def targets_section(conditions: List[Condition], headline: Dict) -> List[str]:
    """Each target against its measured ratio, per condition."""
    md = [
        "| target (default `gather` sampler / `ROIPooler`) | limit | "
        + " | ".join(c.title for c in conditions) + " |",
        "| --- | --- |" + " --- |" * len(conditions),
    ]

    def cell(key, limit, index):
        v = headline.get(key)
        if v is None or v[index] is None:
            return "-"
        return f"{v[index]:.2f}x {'yes' if v[index] <= limit else '**no**'}"

    for label, (case, mode), limit in TARGETS:
        md.append(f"| time, {label} | {limit}x | "
                  + " | ".join(cell((c.name, case, mode, "gather"), limit, 0) for c in conditions) + " |")
    for case, mode in (("train_r0", "fwd"), ("train_r0", "fwd+bwd"), ("train_r2", "fwd"), ("train_r2", "fwd+bwd"),
                       ("infer_r0", "infer"), ("mask_r0", "fwd"), ("mask_r0", "fwd+bwd")):
        md.append(f"| peak extra memory, {case} {mode} | {MEMORY_TARGET}x | "
                  + " | ".join(cell((c.name, case, mode, "gather"), MEMORY_TARGET, 1) for c in conditions) + " |")
    shapes = MODEL_CASES[1].config
    md.append(f"| shapes R18-FPN training iteration, plugin / built-in heads | {MODEL_TARGET}x (busy core) | "
              + " | ".join(cell((c.name, "model", shapes, "train"), MODEL_TARGET, 0) for c in conditions) + " |")
    return md


def run(args) -> str:
    device = args.device
    quick = args.quick
    reps = args.reps or (3 if quick else 7)
    height, width = image_size(quick)
    conditions = [CONDITIONS[c] for c in args.conditions]
    md = [
        "# Benchmarks" if not quick else "# Benchmarks (--quick: smaller sizes, not the reference figures)",
        "",
        "Generated by `" + " ".join(["python tools/benchmark.py"] + sys.argv[1:]) + "`; do not edit by hand.",
        "",
        *machine_info(device),
        "- conditions: " + "; ".join(
            f"**{c.title}** (`torch.set_num_threads({c.threads})`"
            + (", a `while True: pass` process started by the benchmark holds one core" if c.busy else "") + ")"
            for c in conditions),
        f"- pooler inputs: 2 images {height}x{width}, P2..P5 with 256 channels (float32), "
        "ROIAlignV2, boxes with side lengths log-uniform in 16..800 px, uniform centres, clipped to the image",
        f"- timing: {reps} repetitions after warm-up, implementations interleaved; time = median (min-max) "
        "in ms; ratio = median over repetitions of (this / Detectron2 `ROIPooler`) of the same repetition",
        "- memory: peak extra memory of one step after warm-up, each case in a process of its own "
        + ("(`torch.cuda.max_memory_allocated` minus the memory allocated before the step)" if device.startswith("cuda")
           else "(growth of the resident-set high-water mark, `/proc/self/status` VmHWM after `clear_refs`, "
                "with a fixed glibc mmap threshold so freed blocks leave the resident set)"),
        "- the `grid_sample` sampler and the notebook design are measured in the idle condition only",
        "- `torch.compile` rows: default settings (inductor), compiled during the warm-up calls; the "
        "pooler compiled alone, the whole model with `model.roi_heads` compiled",
        "",
    ]
    headline: Dict = {}
    sections = []
    for cond in conditions:
        torch.set_num_threads(cond.threads)
        with busy_core(cond.busy):
            body = ["", f"## {cond.title}", "", "### Pooler", ""] + pooler_section(args, cond, headline)
            if not args.no_model:
                for mcase in MODEL_CASES:
                    if args.models and os.path.basename(os.path.dirname(mcase.config)) not in args.models:
                        continue
                    if mcase.image_hw[0] > 400 and cond.name != "idle":
                        continue  # R50 at 800x1216: idle condition only (minutes per condition)
                    body += ["", f"### Whole model: {mcase.title}", ""] + model_section(args, cond, mcase, headline)
        sections += body
    md += ["## Targets", ""] + targets_section(conditions, headline) + sections
    md += [
        "",
        "The notebook design keeps one copy of its image's level map per ROI (forward) and one "
        "level-sized gradient per ROI (backward), so its time and memory grow linearly with the ROI "
        "count; at 512 ROIs per image it would need roughly 512/16 = 32x the figures of its row above.",
    ]
    if not device.startswith("cuda"):
        md += ["", "## GPU", "", args.gpu_note]
    md += ["", NOTES]
    md.append("")
    return "\n".join(md)


def profile(args) -> str:
    """torch.profiler of one step of ``IMPL:CASE:MODE`` in each condition: a markdown summary
    (wall time of the profiled step, aten op calls, the ops with most self CPU time)."""
    impl, case_name, mode = args.profile.split(":")
    case = next(c for c in pooler_cases(args.quick) if c.name == case_name)
    md = [f"### {args.label or impl}: `{args.profile}`", ""]
    for cond in (CONDITIONS[c] for c in args.conditions):
        torch.set_num_threads(cond.threads)
        step = make_step(impl, case, mode, args.quick, args.device)
        with busy_core(cond.busy):
            step()
            step()  # warm-up
            t0 = time.perf_counter()
            with torch.profiler.profile() as prof:
                step()
            wall = time.perf_counter() - t0
        events = [e for e in prof.key_averages() if e.key.startswith(("aten::", "torchvision::"))]
        calls = sum(e.count for e in events)
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]
        md.append(
            f"- **{cond.title}**: {wall * 1e3:.0f} ms, {calls} op calls; "
            + ", ".join(f"`{e.key.split('::')[-1]}` {e.self_cpu_time_total / 1e3:.0f} ms ({e.count}x, "
                        f"{100 * e.self_cpu_time_total / total:.0f} %)" for e in top)
        )
        if args.verbose:
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20), file=sys.stderr)
    return "\n".join(md + [""])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions (< 1 min)")
    parser.add_argument("--conditions", nargs="*", default=list(CONDITIONS), choices=list(CONDITIONS),
                        help="conditions to measure (default: all three)")
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)  # memory subprocesses
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--reps", type=int, default=0, help="pooler repetitions (default 7, quick 3)")
    parser.add_argument("--model-reps", type=int, default=0, help="whole-model repetitions (default 3, quick 1)")
    parser.add_argument("--cases", nargs="*", help="only these pooler cases (train_r0 train_r2 infer_r0 mask_r0 notebook)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--no-model", action="store_true", help="skip the whole-model benchmark")
    parser.add_argument("--models", nargs="*", choices=["configs", "shapes"],
                        help="only these whole models: configs (R50-FPN), shapes (the demo's R18-FPN)")
    parser.add_argument("--out", default=None, help="markdown file to write (default BENCHMARKS.md; "
                        "--quick writes none unless given)")
    parser.add_argument("--gpu-note", default="No GPU was available to this run, so there is no GPU section; "
                        "rerun with `--device cuda` on a machine with one.")
    parser.add_argument("--profile", metavar="IMPL:CASE:MODE", default=None,
                        help="profile one step (torch.profiler, self CPU time) in each condition, e.g. "
                        "gather:train_r2:fwd+bwd, print a markdown summary and exit")
    parser.add_argument("--profile-md", default="", help="with --profile: append the summary to this file")
    parser.add_argument("--label", default="", help="with --profile: the summary's title")
    parser.add_argument("--verbose", action="store_true", help="with --profile: full tables on stderr")
    parser.add_argument("--_memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.profile:
        text = profile(args)
        print(text)
        if args.profile_md:
            with open(args.profile_md, "a") as f:
                f.write(text + "\n")
        return
    if args._memory:
        impl, case_name, mode = args._memory.split(":")
        print(measure_memory_here(impl, case_name, mode, args.quick, args.device))
        return
    text = run(args)
    print(text)
    out = args.out if args.out is not None else (None if args.quick else os.path.join(REPO, "BENCHMARKS.md"))
    if out:
        with open(out, "w") as f:
            f.write(text)
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
