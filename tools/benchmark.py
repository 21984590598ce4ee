#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Benchmark roi_plugin's ROIAlignPooler against Detectron2's ROIPooler, and whole Mask R-CNN.

Measures, side by side in one process and after warm-up:

* the pooler, forward and forward+backward, for training (2 images 800x1216, P2..P5 with 256
  channels, 512 ROIs per image with log-uniform sizes 16..800 px, sampling ratio 0 and 2),
  inference (1000 ROIs per image, no grad, ratio 0) and the mask pooler (14x14, 64 ROIs per
  image), for both samplers (``gather``, ``grid_sample``) against Detectron2's ``ROIPooler``
  (``ROIAlignV2``), plus the notebook's per-ROI ``expand`` design at a small ROI count;
* peak memory of each case, each in a process of its own (CPU: growth of the resident set
  high-water mark over the state after warm-up; CUDA: ``torch.cuda.max_memory_allocated``);
* one training iteration and one inference pass of Mask R-CNN with roi_plugin's heads
  (``PluginROIHeads`` + ``TwoMLPHead``) against the built-in heads (``StandardROIHeads`` +
  ``FastRCNNConvFCHead``), same config otherwise, same weights, same input: R50-FPN at
  800x1216, and the shapes demo's R18-FPN at 256x256.

Repetitions of the implementations being compared are interleaved (A B C, B C A, ...) so that
load from other processes hits all of them alike; ratios are the median of per-repetition
ratios. Writes ``BENCHMARKS.md`` (``--out``).

Usage::

    python tools/benchmark.py              # full run (~15-25 min on 2 CPU cores), writes BENCHMARKS.md
    python tools/benchmark.py --quick      # smaller sizes, under a minute, prints the tables only
    python tools/benchmark.py --profile gather:train_r2:fwd+bwd   # the profile behind the notes
"""
import argparse
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
IMPL_NAMES = {
    "detectron2": "Detectron2 `ROIPooler`",
    "gather": "plugin, `gather` sampler (default)",
    "grid_sample": "plugin, `grid_sample` sampler",
    "notebook": "notebook design (per-ROI `expand` + `grid_sample`)",
}


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
        Case("train_r0", "training, box 7x7, sampling ratio 0", 7, 512 // scale, 0, ("fwd", "fwd+bwd")),
        Case("train_r2", "training, box 7x7, sampling ratio 2", 7, 512 // scale, 2, ("fwd", "fwd+bwd")),
        Case("infer_r0", "inference, box 7x7, ratio 0, no grad", 7, 1000 // scale, 0, ("infer",)),
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

    return ROIAlignPooler(case.output, SCALES, case.ratio, "ROIAlignV2", sampler=impl)


def make_step(impl: str, case: Case, mode: str, quick: bool, device: str) -> Callable[[], None]:
    """A closure running one pooler call (and its backward) on fixed inputs."""
    from detectron2.structures import Boxes

    height, width = image_size(quick)
    feats = make_features(2, height, width, device)
    boxes = make_boxes(2, case.rois, height, width, device)
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

    train = interleaved({"builtin": train_step(builtin), "plugin": train_step(plugin)}, reps, 1, device)
    print(f"[model] {case.title}: inference", file=sys.stderr, flush=True)
    infer = interleaved({"builtin": infer_step(builtin), "plugin": infer_step(plugin)}, reps, 1, device)
    return {f"train ({case.train_batch} images, fwd+bwd)": train, "inference (1 image)": infer}


# ---------------------------------------------------------------------------- report
def fmt_t(ts: List[float]) -> str:
    return f"{statistics.median(ts) * 1e3:.0f} ({min(ts) * 1e3:.0f}-{max(ts) * 1e3:.0f})"


def ratio(ts: List[float], ref: List[float]) -> float:
    return statistics.median([a / b for a, b in zip(ts, ref)])


def machine_info(threads: int, device: str) -> List[str]:
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
        f"- threads: `torch.set_num_threads({threads})`, device: {device}",
    ]
    if device.startswith("cuda"):
        lines.append(f"- GPU: {torch.cuda.get_device_name()}")
    return lines


NOTES = """## What the time goes to (torch.profiler, CPU, 2 threads)

Profiled with `torch.profiler.profile()` around one forward+backward of the training case
(2 x 512 ROIs), `key_averages()` sorted by self CPU time, on an otherwise idle moment of the
machine: `python tools/benchmark.py --profile gather:train_r2:fwd+bwd` (any `IMPL:CASE:MODE`).

- **Before** (first gather version: one `embedding_bag` per level on a full channels-last copy of the
  level, gradient handed back channels-last): at ratio 2, `aten::copy_` 54 % of the time, most of it
  autograd re-laying the channels-last gradient out as NCHW (`AccumulateGrad`; in a model the FPN
  convolution or the sum with the RPN's gradient pays the same, a strided NCHW <- NHWC copy at
  ~4x the cost of a plain copy), `embedding_bag` 25 %, `fill_`/`index_put_` ~9 %.
- **After** (default now): levels are sampled by one `embedding_bag` over all ROIs per chunk of 64
  channels, bags already in output order (no scatter into the output), and the backward builds each
  image's gradient rows chunk by chunk and transposes them straight into a contiguous NCHW gradient
  with `copy_`'s blocked 2-D transpose. Profile at ratio 2: layout copies ~55 % (the NCHW -> rows
  copies of the forward and the rows -> NCHW transposes of the backward, ~10 ms per 15 MB block,
  single-threaded), `embedding_bag` ~15 %, `argsort` of the taps ~5 %, bookkeeping (plan building,
  `nonzero`, `cat`) the rest; at ratio 0 the plan building (`index`, `nonzero`, `cat` over the
  power-of-two grid groups) adds ~10 %.
- **Touched rows only** (now): when the taps of a call touch at most half of the rows of the
  levels it samples (the mask pooler's few positive ROIs, a handful of proposals), only those rows
  are gathered (`index_select` along each channel row, then one blocked transpose) and the
  backward scatters their gradient rows into a zeroed NCHW gradient (`index_copy_`). Mask
  14x14 forward+backward went from 0.44x to 0.2x-0.3x of `ROIPooler`'s time, and the 16-ROI case
  from 2.4x (the pyramid copy dominated) to about 0.7x (ranges over three runs of the benchmark).
- **What remains and why**: with many ROIs the taps touch most of the pyramid, and the layout
  copies cannot go while the FPN hands over NCHW maps and wants an NCHW gradient: a sum over rows
  needs channels-last rows. They are already at memory-copy speed per block; running them for two
  images on two threads would halve them but is not done (no threads inside the pooler). Peak
  memory of forward+backward is within 1.1x of `ROIPooler`'s; forward-only peaks are higher (the
  inference row about 1.4x): the transient 64-channel table (rows of every sampled level, ~40 MB
  at 2 x 800x1216) and the taps (int32 row, float weight) come on top of the output that both
  implementations allocate. A smaller channel chunk would trade that memory for more
  `embedding_bag` passes over the taps.
- **Whole model**: in a Mask R-CNN R50-FPN training iteration (random init, 2 images 800x1216) the
  profile is ~85 % convolutions (`convolution_backward` 5.2 s, `mkldnn_convolution` 2.5-3.1 s of
  ~9.5 s); Detectron2's `roi_align` forward+backward there is ~0.2 s, and the plugin's pooler saves
  a part of it: the training ratio was 0.92x to 1.00x over three runs, within this machine's noise. In the R50 inference pass (random init: no
  detection passes the score threshold, so nothing is mask-pooled) `torchvision::roi_align` takes
  ~1.5 ms of ~1.5 s (0.1 %): no pooler can make that pass measurably faster, and ours spends a
  few ms more there on the layout copy, so the ratio is 1.0x within noise. In the shapes demo's
  R18-FPN at 256x256, where the ROI heads are a larger share, training is 8-11 % faster (three runs); in its
  inference pass `roi_align` is ~6 % of the built-in pass against ~1 % for our `embedding_bag`,
  and the plan building's many small ops (index, nonzero, cat: dispatch overhead) eat most of the
  difference, so that ratio is close to 1 (0.95x to 1.0x over our runs).
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


def run(args) -> str:
    device = args.device
    quick = args.quick
    reps = args.reps or (3 if quick else 7)
    height, width = image_size(quick)
    md = [
        "# Benchmarks" if not quick else "# Benchmarks (--quick: smaller sizes, not the reference figures)",
        "",
        "Generated by `python tools/benchmark.py" + (" --quick" if quick else "") + "`; do not edit by hand.",
        "",
        *machine_info(args.threads, device),
        f"- pooler inputs: 2 images {height}x{width}, P2..P5 with 256 channels (float32), "
        "ROIAlignV2, boxes with side lengths log-uniform in 16..800 px, uniform centres, clipped to the image",
        f"- timing: {reps} repetitions after warm-up, implementations interleaved; time = median (min-max) "
        "in ms; ratio = median over repetitions of (this / Detectron2 `ROIPooler`) of the same repetition",
        "- memory: peak extra memory of one step after warm-up, each case in a process of its own "
        + ("(`torch.cuda.max_memory_allocated` minus the memory allocated before the step)" if device.startswith("cuda")
           else "(growth of the resident-set high-water mark, `/proc/self/status` VmHWM after `clear_refs`, "
                "with a fixed glibc mmap threshold so freed blocks leave the resident set)"),
        "",
        "## Pooler",
        "",
        "| case | mode | implementation | time ms | ratio | peak extra MB | memory ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    headline = {}
    for case in pooler_cases(quick):
        if args.cases and case.name not in args.cases:
            continue
        for mode in case.modes:
            print(f"[pooler] {case.name} {mode}", file=sys.stderr, flush=True)
            steps = {impl: make_step(impl, case, mode, quick, device) for impl in case.impls}
            times = interleaved(steps, reps, 1 if quick else 2, device)
            del steps
            gc.collect()
            mem = {}
            # --quick measures memory for the headline case only (each one is a process start).
            if not args.no_memory and (not quick or (case.name, mode) == ("train_r0", "fwd+bwd")):
                for impl in case.impls:
                    mem[impl] = measure_memory(impl, case, mode, quick, device, args.threads)
            for impl in case.impls:
                r = ratio(times[impl], times["detectron2"])
                m = mem.get(impl)
                m_ref = mem.get("detectron2")
                m_ratio = f"{m / m_ref:.2f}x" if m is not None and m_ref else "-"
                label = f"{case.description}, {case.rois} ROIs/image"
                md.append(
                    f"| {label} | {mode} | {IMPL_NAMES[impl]} | {fmt_t(times[impl])} | {r:.2f}x | "
                    f"{'-' if m is None else f'{m:.0f}'} | {m_ratio} |"
                )
                headline[(case.name, mode, impl)] = (r, None if m is None or not m_ref else m / m_ref)
    md += [
        "",
        "The notebook design keeps one copy of its image's level map per ROI (forward) and one "
        "level-sized gradient per ROI (backward), so its time and memory grow linearly with the ROI "
        "count; at 512 ROIs per image it would need roughly 512/16 = 32x the figures of its row above.",
    ]
    if not args.no_model:
        for mcase in MODEL_CASES:
            print(f"[model] {mcase.title}", file=sys.stderr, flush=True)
            mreps = args.model_reps or (1 if quick else (3 if mcase.image_hw[0] > 400 else 7))
            res = model_bench(mcase, quick, device, mreps)
            mh, mw = mcase.quick_hw if quick else mcase.image_hw
            md += [
                "",
                f"## Whole model: {mcase.title}",
                "",
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
                headline[("model", mcase.config, name)] = (r, None)
    if not device.startswith("cuda"):
        md += ["", "## GPU", "", args.gpu_note]
    md += ["", NOTES]
    md.append("")
    return "\n".join(md)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions (< 1 min)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--reps", type=int, default=0, help="pooler repetitions (default 7, quick 3)")
    parser.add_argument("--model-reps", type=int, default=0, help="whole-model repetitions (default 3, quick 1)")
    parser.add_argument("--cases", nargs="*", help="only these pooler cases (train_r0 train_r2 infer_r0 mask_r0 notebook)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--no-model", action="store_true", help="skip the whole-model benchmark")
    parser.add_argument("--out", default=None, help="markdown file to write (default BENCHMARKS.md; "
                        "--quick writes none unless given)")
    parser.add_argument("--gpu-note", default="No GPU was available to this run, so there is no GPU section; "
                        "rerun with `--device cuda` on a machine with one.")
    parser.add_argument("--profile", metavar="IMPL:CASE:MODE", default=None,
                        help="print the torch.profiler table (self CPU time) of one step, e.g. "
                        "gather:train_r2:fwd+bwd, and exit; the source of the profile notes")
    parser.add_argument("--_memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.profile:
        impl, case_name, mode = args.profile.split(":")
        case = next(c for c in pooler_cases(args.quick) if c.name == case_name)
        step = make_step(impl, case, mode, args.quick, args.device)
        step()  # warm-up
        with torch.profiler.profile() as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
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
