#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The pooler on a CUDA GPU, in one command (issue 21): equal, deterministic, bounded in memory, timed.

Sections (each a function below; each writes its part of the report as it finishes, so a run
cut short keeps what it measured):

1. **The device path** (issue 27): host reads, operator calls and kernel launches of one
   operator call of each sampler and path (tools/op_counts.py; on CUDA the real kernels run,
   in a dry run their launches are only recorded); on CUDA also what the CUDA profiler sees of
   one training step (kernel launches, stream synchronisations, device-to-host copies); and
   the device path's kernels built for the GPU (or for sm_90 in a dry run): registers, spills.
2. **Equality**: both samplers against ``torchvision.ops.roi_align`` on the levels Detectron2's
   rule picks (its ``ROIPooler``, which is that) on CUDA, and against the pooler's own CPU
   float32 result; float32, float16, bfloat16 and autocast (float16 maps under
   ``torch.autocast``); sampling ratios 0 and 2; ROIAlign, ROIAlignV2 and ROIAlignRotated (its
   CUDA counterpart is Detectron2's compiled ROIAlignRotated where its ``_C`` has CUDA kernels);
   outputs and feature gradients. Each error is measured against a float64 CPU reference
   (torchvision's kernel in float64; for rotated boxes the float64 transcription of Detectron2's
   kernel, tests/rotated_reference.py).
3. **Determinism**: under ``torch.use_deterministic_algorithms(True)``, and without it, 10
   backward passes of each pooler (plugin samplers, ``ROIPooler``) on the same input: does it
   run, are the feature gradients bitwise equal; 20 iterations of the shapes Mask R-CNN
   (configs/shapes/mask_rcnn_plugin.yaml and mask_rcnn_builtin.yaml) trained twice from the
   same seed on the same batches, losses compared.
4. **Memory**: peak GPU memory and time of a training step against ``ROIPooler``'s without the
   determinism flag; then under it: peak GPU memory and time of a training step (forward +
   backward) of the pooler against ``ROIPooler``, whose torchvision ``roi_align`` takes its
   pure-Python path under the flag, at Detectron2's defaults and at growing inputs until
   torchvision's runs out of memory.
5. **Speed**: tools/benchmark.py's pooler cases and its whole-model cases (R50-FPN and the
   shapes model: built-in heads, plugin heads, plugin heads under ``torch.compile(model.roi_heads)``,
   whose failure is reported with its chain of causes) on CUDA (synchronised medians,
   implementations interleaved).

Without a CUDA device (or with ``--device cpu``) it is a dry run: the CPU parts that make sense
(section 2's CPU results and references, a small determinism check on the CPU) run, every
CUDA part is reported as skipped, and it exits 0.

    python tools/gpu_check.py --quick --out /tmp/gpu_quick.md  # first, on a GPU machine: < 5 min
    python tools/gpu_check.py            # then the full run: ~6 min, writes results/gpu.md
    python tools/gpu_check.py --device cpu --quick --out /tmp/gpu.md   # the dry run (CI)

``--quick`` runs every section with smaller inputs and fewer repetitions: equality, determinism
and the speed rows against ``ROIPooler`` and the built-in heads, in a few minutes.

A dry run writes a file only when ``--out`` is given (results/gpu.md holds GPU figures only).
"""
import argparse
import contextlib
import gc
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback

# Deterministic cuBLAS needs its workspace configured before the first CUDA call.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

from detectron2.modeling.poolers import ROIPooler  # noqa: E402
from detectron2.structures import Boxes, RotatedBoxes  # noqa: E402

from roi_plugin import SAMPLERS, ROIAlignPooler  # noqa: E402

from bench.cases import (  # noqa: E402  (this folder, tools/)
    IMPL_NAMES, SCALES, Case, build_pooler, image_size, make_boxes, make_step, pooler_cases,
)
from bench.models import MODEL_KEYS, model_bench  # noqa: E402
from bench.report import machine_info  # noqa: E402
from timing import fmt_t, interleaved, ratio as median_ratio  # noqa: E402
import pooler_accuracy  # noqa: E402
import rotated_pooler_accuracy  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIPPED = "skipped: no CUDA device"
# Errors any implementation may have in a dtype: float32, torchvision's own kernel is 1e-4-2e-4 off
# float64 on these inputs (results/pooler_accuracy.md); half precision, 8 ulp at 1.0.
FLOOR = {torch.float32: 2e-4, torch.float16: 8 * 2.0**-10, torch.bfloat16: 8 * 2.0**-7}


class Report:
    """The markdown report, rewritten to ``path`` after every section."""

    def __init__(self, path, header):
        self.path, self.lines = path, list(header)

    def add(self, *lines):
        self.lines += lines
        print("\n".join(lines), flush=True)
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "w") as f:
                f.write("\n".join(self.lines) + "\n")


def first_line(e: BaseException) -> str:
    """The exception's type and first line, without source paths."""
    msg = re.sub(r"\S+\.(?:cpp|cu|cuh|h|py):\d+,?\s*", "", (str(e).strip().splitlines() or [""])[0])
    return f"{type(e).__name__}: {msg.removeprefix('operator(), ')[:160]}"


@contextlib.contextmanager
def deterministic(on: bool):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def pooler_step(impl, output, ratio, rois, hw, device, channels=256):
    """A closure: one forward + backward (upstream gradient ones) of ``impl`` ("gather",
    "grid_sample" or "detectron2", tools/benchmark.py's) on fixed inputs: P2..P5 of 2 images of
    ``hw`` pixels and tools/benchmark.py's boxes; ``step.feats`` are the leaf maps."""
    h, w = hw
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, channels, math.ceil(h * s), math.ceil(w * s), generator=g).to(device).requires_grad_()
             for s in SCALES]
    boxes = make_boxes(2, rois, h, w, device.type)
    pooler = build_pooler(impl, Case("", "", output, rois, ratio, ()), hw)
    args = [Boxes(b) for b in boxes] if impl == "detectron2" else boxes

    def step():
        for f in feats:
            f.grad = None
        out = pooler(feats, args)
        out.backward(torch.ones_like(out))

    step.feats = feats
    return step


def d2_rotated_missing(device) -> str:
    """Why Detectron2's ROIAlignRotated cannot run on ``device`` here ('' when it can)."""
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return "Detectron2 has no compiled _C"
    try:
        ROIPooler(2, (1.0,), 0, "ROIAlignRotated")([torch.zeros(1, 1, 4, 4, device=device)],
                                                  [RotatedBoxes(torch.tensor([[2.0, 2, 2, 2, 0]], device=device))])
    except Exception as e:  # a _C built without CUDA
        return f"Detectron2's _C has no {device.type} kernel ({first_line(e)})"
    return ""


# ---------------------------------------------------------------------------- 1. device path
def kernel_resources(capability: int):
    """Rows of tools/bench/kernels.py's JSON lines for ``capability``: built in a process of its own
    without Triton's interpreter (which replaces the compiler); [] with the error where it fails."""
    import json
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(REPO, "tools"), REPO, env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-m", "bench.kernels", "--capability", str(capability)], env=env, cwd=REPO,
                         capture_output=True, text=True)
    if res.returncode != 0:
        return [], (res.stderr.strip().splitlines() or ["?"])[-1]
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")], ""


def step_profile(case, path: str, device, quick) -> str:
    """What the CUDA profiler sees of one ``gather`` training step of ``case`` on ``path``
    ("device" or "plan"): launches, synchronisations, copies, and where the device time goes."""
    import op_counts

    with op_counts.device_path_mode("auto" if path == "device" else "off"):
        step = make_step("gather", case, "fwd+bwd", quick, device.type)
        step()
        sync(device)
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            step()
            sync(device)
    events = prof.key_averages()
    calls = {e.key: e.count for e in events}
    dev_time = lambda e: getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))  # noqa: E731
    kernels = [e for e in events if dev_time(e) > 0 and not e.key.startswith(("aten::", "triton::", "cuda"))]
    top = sorted(kernels, key=dev_time, reverse=True)[:5]
    return (f"CUDA profile of one `gather` training step ({case.description}), {path} path: "
            f"{sum(c for k, c in calls.items() if k.startswith('aten::'))} aten op calls, "
            f"{sum(c for k, c in calls.items() if 'LaunchKernel' in k)} kernel launches, "
            f"{calls.get('cudaStreamSynchronize', 0)} `cudaStreamSynchronize`, "
            f"{sum(c for k, c in calls.items() if k.startswith('cudaMemcpy'))} `cudaMemcpy*` (a `.tolist()` or "
            f"`int(...)` of a CUDA tensor is one, and waits for the device); device time "
            f"{sum(dev_time(e) for e in kernels) / 1e3:.2f} ms, most in: "
            + ", ".join(f"`{e.key[:60]}` {dev_time(e) / 1e3:.2f} ms ({e.count}x)" for e in top) + ".")


def device_path(report, device, quick):
    import op_counts

    rois = 64 if quick else 512
    report.add(
        "## 1. The device path", "",
        f"One operator call of each pooler at Detectron2's FPN defaults (2 images 400x608, P2..P5, 64 channels, "
        f"{rois} ROIs per image, sampling ratio 0) on {device.type}, counted with the profiler by tools/op_counts.py: "
        "*operator calls*: aten calls other than views, nested calls included, plus one per Triton kernel launch; "
        "*host reads*: `.item()`, `int()`/`bool()` of a tensor, `.tolist()`, `nonzero` (boolean-mask indexing), "
        "`unique`, `bincount`, `repeat_interleave` without `output_size`. *device*: the Triton kernels (the "
        "`gather` sampler's path on CUDA); *plan*: the embedding_bag plan (the CPU's path; on CUDA, "
        "`grid_sample`'s)"
        + ("" if device.type == "cuda" else "; in a dry run the kernels' launches are recorded, not run") + ".", "",
        "| pooler | path | direction | operator calls | host reads | kernel launches |", "|---|---|---|---:|---:|---:|")
    rows = [("gather", "ROIAlignV2", "device"), ("gather", "ROIAlignV2", "plan"), ("gather", "ROIAlignRotated", "device"),
            ("gather", "ROIAlignRotated", "plan"), ("grid_sample", "ROIAlignV2", "plan")]
    for sampler, pooler_type, path in rows:
        counts = op_counts.pooler_counts(sampler, path, rois, 0, pooler_type, device=device.type)
        for direction, c in counts.items():
            report.add(f"| {sampler} {pooler_type} | {path} | {direction} | {c.calls} | {c.host_reads} | "
                       f"{c.launches if path == 'device' else '-'} |")
    if device.type == "cuda":
        case = {c.name: c for c in pooler_cases(quick)}["train_r0"]
        for path in ("device", "plan"):
            report.add("", step_profile(case, path, device, quick))
    capability = 90
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        capability = 10 * major + minor
    built, error = kernel_resources(capability)
    report.add("", f"The device path's kernels built for compute capability {capability / 10:.1f} (Triton's compiler "
               "and the ptxas it ships; tools/bench/kernels.py):" + (f" failed: {error}" if error else ""), "")
    if built:
        report.add("| kernel (direction:dtype:output) | registers | spill stores (bytes) | atomics | approximate "
                   "divisions |", "|---|---:|---:|---:|---:|")
        for k in built:
            report.add(f"| {k['kernel']} | {k.get('registers', '?')} | {k.get('spill_stores', '?')} | {k['atomics']} "
                       f"| {k['approximate_divisions']} |")
    report.add("")


# ---------------------------------------------------------------------------- 2. equality
def pool(pooler, feats, boxes, grad, device, dtype, autocast=False):
    """Output and feature gradients (float64, CPU) of one forward + backward in ``dtype``."""
    x = [f.detach().to(device, dtype).requires_grad_() for f in feats]  # fresh leaves: no gradient shared
    boxes = [b.to(device) for b in boxes]
    if isinstance(pooler, ROIPooler):
        boxes = [(RotatedBoxes if b.shape[1] == 5 else Boxes)(b) for b in boxes]
    with torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16,
                        enabled=autocast):
        out = pooler(x, boxes)
    out.backward(grad.to(device, out.dtype))
    grads = [torch.zeros_like(f) if f.grad is None else f.grad for f in x]
    return out.detach().double().cpu(), [g.double().cpu() for g in grads]


def max_diff(a, b):
    """Max abs difference of two (output, gradients) results: (output, gradients)."""
    out = (a[0] - b[0]).abs().max().item()
    return out, max((x - y).abs().max().item() for x, y in zip(a[1], b[1]))


def fmt_pair(v):
    return f"{v[0]:.1e} / {v[1]:.1e}" if isinstance(v, tuple) else (v or "-")


def equality(report, device, quick):
    missing = {d.type: d2_rotated_missing(d) for d in {torch.device("cpu"), device}}
    rois, channels, size = (16, 8, (128, 192)) if quick else (96, 32, (512, 768))
    dtypes = [("float32", torch.float32, False), ("float16", torch.float16, False),
              ("bfloat16", torch.bfloat16, False), ("autocast (float16 maps)", torch.float16, True)]
    report.add(
        "## 2. Equality", "",
        f"2 images {size[0]}x{size[1]}, P2..P5 with {channels} channels (~N(0, 1)), {rois} ROIs per image "
        "(tools/pooler_accuracy.py's boxes: sides log-uniform 16..800 px, some across the border; rotated: any "
        "angle), output 7x7, one random upstream gradient. *err*: max abs difference to the float64 CPU "
        "reference, output / feature gradients; *kernel*: torchvision's `roi_align` on the same device through "
        "Detectron2's `ROIPooler` (rotated: Detectron2's compiled ROIAlignRotated"
        + "".join(f"; none on {d}: {why}" for d, why in missing.items() if why) + "), same dtype; *CPU*: the "
        "pooler's own float32 CPU result. ok: the pooler's err <= max(2 x the kernel's err, a floor: 2e-4 for "
        "float32, where torchvision's float32 kernel is 1e-4-2e-4 off; 8 ulp at 1.0 for float16 and bfloat16).", "",
        "| pooler_type | ratio | device, dtype | sampler | err | kernel err | vs kernel | vs CPU | ok |",
        "|" + "---|" * 9,
    )
    counts = [0, 0]
    for pooler_type in ("ROIAlignV2", "ROIAlign", "ROIAlignRotated"):
        rotated = pooler_type == "ROIAlignRotated"
        feats, boxes = pooler_accuracy.make_input(seed=3, rois=rois, channels=channels, size=size, rotated=rotated)
        grad = torch.randn(2 * rois, channels, 7, 7, generator=torch.Generator().manual_seed(4))
        for ratio in (0, 2):
            x64 = [f.double().requires_grad_() for f in feats]
            if rotated:
                ref_out = rotated_pooler_accuracy.reference(x64, boxes, 7, ratio)
            else:
                ref_out = ROIPooler(7, SCALES, ratio, pooler_type)(x64, [Boxes(b) for b in boxes])
            ref_out.backward(grad.double())
            truth = (ref_out.detach(), [torch.zeros_like(f) if f.grad is None else f.grad for f in x64])
            ours = {s: ROIAlignPooler(7, SCALES, ratio, pooler_type, sampler=s) for s in SAMPLERS}
            cpu = {s: pool(p, feats, boxes, grad, torch.device("cpu"), torch.float32) for s, p in ours.items()}
            kernel = ROIPooler(7, SCALES, ratio, pooler_type)
            runs = [("cpu", torch.device("cpu"), "float32", torch.float32, False)]
            runs += [("cuda", device, n, d, a) for n, d, a in dtypes] if device.type == "cuda" else []
            for dev_name, dev, dname, dtype, autocast in runs:
                k, k_err = None, None
                try:
                    if not (rotated and missing[dev.type]):
                        k = pool(kernel, feats, boxes, grad, dev, dtype, autocast)
                        k_err = max_diff(k, truth)
                except Exception as e:  # e.g. a dtype the kernel does not implement
                    k_err = first_line(e)
                for s, p in ours.items():
                    try:
                        res = cpu[s] if dev_name == "cpu" else pool(p, feats, boxes, grad, dev, dtype, autocast)
                    except Exception as e:
                        report.add(f"| {pooler_type} | {ratio} | {dev_name}, {dname} | {s} | {first_line(e)} |"
                                   " - | - | - | **no** |")
                        counts[1] += 1
                        continue
                    err = max_diff(res, truth)
                    floor = FLOOR[dtype]
                    bound = [max(2 * k_err[i], floor) if isinstance(k_err, tuple) else floor for i in (0, 1)]
                    ok = err[0] <= bound[0] and err[1] <= bound[1]
                    counts[0 if ok else 1] += 1
                    report.add(
                        f"| {pooler_type} | {ratio} | {dev_name}, {dname} | {s} | {fmt_pair(err)} | "
                        f"{fmt_pair(k_err)} | {fmt_pair(max_diff(res, k)) if k else '-'} | "
                        f"{fmt_pair(max_diff(res, cpu[s])) if dev_name == 'cuda' else '-'} | "
                        f"{'yes' if ok else '**no**'} |")
    if device.type != "cuda":
        report.add("", f"CUDA rows: {SKIPPED} (only the CPU float32 rows above ran).")
    report.add("", f"Equality: {counts[0]} rows ok, {counts[1]} not.", "")


# ---------------------------------------------------------------------------- 3. determinism
def repeated_backward(impl, case, device, flag, passes=10):
    """10 forward+backward passes of ``case`` (``pooler_step``'s arguments) on the same input: a sentence."""
    grads = []
    try:
        out, ratio, rois, hw, channels = case
        step = pooler_step(impl, out, ratio, rois, hw, device, channels)
        with deterministic(flag):
            for _ in range(passes):
                step()
                grads.append([f.grad.clone() for f in step.feats if f.grad is not None])
    except Exception as e:
        return f"raises {first_line(e)}"
    finally:
        step = None
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
    differ = [i for i, g in enumerate(grads[1:], 1) if not all(torch.equal(a, b) for a, b in zip(g, grads[0]))]
    if not differ:
        return f"runs; {passes} passes bitwise equal"
    worst = max(max((a - b).abs().max().item() for a, b in zip(grads[i], grads[0])) for i in differ)
    return f"runs; {len(differ)} of {passes - 1} passes differ from the first (max abs diff {worst:.1e})"


def shapes_batches(n_batches, batch_size):
    """The first shapes training images (the train split's seeds), as a data loader would give them."""
    from detectron2.data import detection_utils
    from detectron2.structures import BoxMode

    from roi_plugin.data.shapes import SPLITS, generate_shapes_image

    seed, out = SPLITS["train"][1], []
    for i in range(n_batches * batch_size):
        image, annos = generate_shapes_image([seed, i])
        annos = [dict(a, bbox_mode=BoxMode.XYWH_ABS) for a in annos]
        h, w = image.shape[:2]
        out.append({"image": torch.as_tensor(image[:, :, ::-1].copy()).permute(2, 0, 1), "height": h, "width": w,
                    "instances": detection_utils.annotations_to_instances(annos, (h, w), mask_format="polygon")})
    return [out[i:i + batch_size] for i in range(0, len(out), batch_size)]


def train_losses(config, device, batches, seed=42):
    """Total loss of each iteration of the config's model, optimizer and schedule from ``seed``."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.solver import build_lr_scheduler, build_optimizer
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import EventStorage

    from roi_plugin import add_roi_plugin_config

    cfg = get_cfg()
    add_roi_plugin_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.MODEL.DEVICE = device.type
    seed_all_rng(seed)
    model = build_model(cfg).train()
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    losses, t0 = [], time.perf_counter()
    for it, batch in enumerate(batches):
        with EventStorage(it):
            total = sum(model(batch).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        sched.step()
        losses.append(total.item())
    return losses, (time.perf_counter() - t0) / len(batches)


def determinism(report, device, quick):
    hw = image_size(quick)
    # (output, sampling ratio, ROIs per image, image size, channels): the benchmark's training cases
    # on CUDA; a small mask case on the CPU.
    cases = [(7, 0, 512, hw, 256), (7, 2, 512, hw, 256)] if device.type == "cuda" else [(14, 0, 16, (128, 192), 16)]
    report.add("## 3. Determinism", "",
               "10 forward+backward passes on the same input (2 images, P2..P5, tools/benchmark.py's boxes; upstream "
               "gradient ones), feature gradients compared bit for bit.", "",
               "| implementation | case | device | `use_deterministic_algorithms(True)` | without the flag |",
               "|---|---|---|---|---|")
    for impl in ("gather", "grid_sample", "detectron2"):
        for case in cases:
            cells = [repeated_backward(impl, case, device, flag) for flag in (True, False)]
            out, ratio, rois, (h, w), ch = case
            report.add(f"| {IMPL_NAMES[impl]} | {out}x{out}, ratio {ratio}, {rois} ROIs/image, {h}x{w}, "
                       f"{ch} channels | {device.type} | {cells[0]} | {cells[1]} |")
    if device.type != "cuda":
        report.add("", f"CUDA rows and the training runs: {SKIPPED}.", "")
        return
    iters = 5 if quick else 20
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False  # restored after the training runs
    batches = shapes_batches(iters, 4)
    report.add("", f"Training: {iters} iterations of the shapes Mask R-CNN (R18-FPN, batch 4, the first "
               f"{iters * 4} shapes training images in order, no augmentation), twice from seed 42, "
               "`cudnn.deterministic = True`, `cudnn.benchmark = False` in every run; total loss per iteration.", "",
               "| config | flag | run 1 vs run 2 | last loss | s/iter |", "|---|---|---|---|---|")
    for config in ("configs/shapes/mask_rcnn_plugin.yaml", "configs/shapes/mask_rcnn_builtin.yaml"):
        for flag in (True, False):
            try:
                with deterministic(flag):
                    (a, t), (b, _) = train_losses(config, device, batches), train_losses(config, device, batches)
            except Exception as e:
                report.add(f"| `{config}` | {'on' if flag else 'off'} | {first_line(e)} | - | - |")
                continue
            finally:
                torch.cuda.empty_cache()
            same = [x == y for x, y in zip(a, b)]
            verdict = (f"identical, {len(a)}/{len(a)} iterations" if all(same) else
                       f"differ from iteration {same.index(False)} (max abs diff "
                       f"{max(abs(x - y) for x, y in zip(a, b)):.1e})")
            report.add(f"| `{config}` | {'on' if flag else 'off'} | {verdict} | {a[-1]:.4f} | {t:.3f} |")
    cudnn.deterministic, cudnn.benchmark = saved
    report.add("")


# ---------------------------------------------------------------------------- 4. memory
def peak_and_time(step, feats, device, reps):
    """Peak extra GPU memory (GiB) of a step over the state before it (inputs, no gradients
    held), and its median time (s)."""
    step()
    for f in feats:
        f.grad = None
    sync(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return (torch.cuda.max_memory_allocated() - base) / 2**30, statistics.median(times)


def memory(report, device, quick):
    report.add("## 4. Memory", "")
    if device.type != "cuda":
        report.add(f"{SKIPPED}.", "")
        return
    hw = image_size(quick)
    report.add(
        "A training step (forward + backward, 7x7, 2 images, P2..P5, tools/benchmark.py's boxes) without "
        "`torch.use_deterministic_algorithms(True)`, the plugin's `gather` sampler against Detectron2's "
        "`ROIPooler` (target: within 1.1x its peak), then under the flag. Peak: `torch.cuda.max_memory_allocated` "
        "over the memory allocated before the step (maps, no gradients); time: median of 3 after one warm-up.", "",
        "| input, without the flag | plugin peak GiB | plugin ms | ROIPooler peak GiB | ROIPooler ms | peak ratio |",
        "|---|---|---|---|---|---|")
    for label, (hh, ww), n, ratio, channels in [("Detectron2's defaults", hw, 1000, 0, 256),
                                                 ("sampling ratio 2", hw, 1000, 2, 256),
                                                 ("mask pooler 14x14", hw, 64, 0, 256)]:
        peaks, cells = [], []
        for impl in ("gather", "detectron2"):
            try:
                step = pooler_step(impl, 14 if "mask" in label else 7, ratio, n, (hh, ww), device, channels)
                with deterministic(False):
                    gib, sec = peak_and_time(step, step.feats, device, 3)
                peaks.append(gib)
                cells += [f"{gib:.3f}", f"{sec * 1e3:.1f}"]
            except Exception as e:
                cells += [first_line(e), "-"]
            step = None
            gc.collect()
            torch.cuda.empty_cache()
        ratio_cell = f"{peaks[0] / peaks[1]:.2f}x" if len(peaks) == 2 and peaks[1] > 0 else "-"
        report.add(f"| {label}: {hh}x{ww}, {n} ROIs/image, ratio {ratio}, {channels} channels | "
                   + " | ".join(cells) + f" | {ratio_cell} |")
    report.add(
        "", "Under `torch.use_deterministic_algorithms(True)`: the plugin's `gather` sampler against Detectron2's "
        "`ROIPooler` (torchvision's `roi_align` takes its pure-Python path under the flag, which under adaptive "
        "sampling samples every ROI on a grid as large as the level's map). Peak: "
        "`torch.cuda.max_memory_allocated` over the memory allocated before the step (maps, no gradients); "
        "time: median of 3 after one warm-up.", "",
        "| input | plugin peak GiB | plugin ms | ROIPooler peak GiB | ROIPooler ms |", "|---|---|---|---|---|")
    # (label, image size, ROIs per image, sampling ratio, channels)
    inputs = [("Detectron2's defaults", hw, 1000, 0, 256), ("sampling ratio 2", hw, 1000, 2, 256),
              ("shapes-model size", (256, 256), 64, 0, 128)]
    inputs += [("ratio 0, growing until torchvision's runs out", hw, n, 0, 256) for n in (1, 4, 16, 64, 256)]
    tv_oom = False  # in the growing series
    for label, (hh, ww), n, ratio, channels in inputs:
        if tv_oom:
            break
        cells = []
        for impl in ("gather", "detectron2"):
            step = None
            try:
                step = pooler_step(impl, 7, ratio, n, (hh, ww), device, channels)
                with deterministic(True):
                    gib, sec = peak_and_time(step, step.feats, device, 3)
                cells += [f"{gib:.2f}", f"{sec * 1e3:.0f}"]
            except torch.cuda.OutOfMemoryError as e:
                asked = re.search(r"Tried to allocate ([\d.]+ \w+)", str(e))
                cells += ["out of memory" + (f" (asked for {asked.group(1)})" if asked else ""), "-"]
                tv_oom = impl == "detectron2" and label.startswith("ratio 0, growing")
            except Exception as e:
                cells += [first_line(e), "-"]
            step = None
            gc.collect()
            torch.cuda.empty_cache()
        report.add(f"| {label}: {hh}x{ww}, {n} ROIs/image, ratio {ratio}, {channels} channels | "
                   + " | ".join(cells) + " |")
    report.add("")


# ---------------------------------------------------------------------------- 5. speed
def speed(report, device, quick):
    report.add("## 5. Speed", "")
    if device.type != "cuda":
        report.add(f"{SKIPPED} (the CPU figures are BENCHMARKS.md's, tools/benchmark.py).", "")
        return
    reps = 3 if quick else 7
    h, w = image_size(quick)
    report.add(f"tools/benchmark.py's pooler cases (2 images {h}x{w}, P2..P5 with 256 channels, ROIAlignV2), "
               f"{reps} repetitions after warm-up, interleaved, `torch.cuda.synchronize()` around each; median "
               "(min-max) ms; ratio: median of per-repetition ratios to `ROIPooler`.", "",
               "| case | mode | implementation | time ms | ratio |", "|---|---|---|---|---|")
    for case in pooler_cases(quick):
        if case.name == "notebook":
            continue
        for mode in case.modes:
            steps = {impl: make_step(impl, case, mode, quick, device.type) for impl in case.impls}
            times = interleaved(steps, reps, 2, device.type)
            for impl in case.impls:
                report.add(f"| {case.description}, {case.rois} ROIs/image | {mode} | {IMPL_NAMES[impl]} | "
                           f"{fmt_t(times[impl])} | "
                           f"{median_ratio(times[impl], times['detectron2']):.2f}x |")
    for key in ("r50", "shapes"):
        whole_model(report, MODEL_KEYS[key], device, quick)


def error_chain(e: BaseException, lines: int = 12) -> str:
    """The exception and its causes, a few lines of each, for a report (an inductor failure's
    root cause sits several causes down)."""
    parts, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = "\n".join(str(e).strip().splitlines()[:lines])
        parts.append(f"{type(e).__module__}.{type(e).__name__}: {text}")
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def whole_model(report, mcase, device, quick):
    """The model case's training and inference pass, built-in heads vs plugin heads (vs the plugin
    heads under ``torch.compile(model.roi_heads)``; where that fails, its error chain is reported
    and the two others are timed)."""
    reps = 2 if quick else 5
    try:
        res = model_bench(mcase, quick, device.type, reps)
    except Exception as e:
        report.add("", f"`torch.compile(model.roi_heads)` of `{mcase.config}` failed on {device.type}:", "", "```",
                   error_chain(e), "```")
        try:
            res = model_bench(mcase, quick, device.type, reps, variants=("builtin", "plugin"))
        except Exception as e2:
            report.add("", f"Whole model `{mcase.config}`: {first_line(e2)}")
            return
    variants = [v for v in ("plugin", "plugin_compiled") if v in next(iter(res.values()))]
    report.add("", f"Whole model, `{mcase.config}` (random init, {mcase.title}) with the plugin heads vs the built-in "
               "heads, same weights and input; ratio to the built-in heads:", "",
               "| pass | built-in ms | " + " | ".join(f"{v} ms | {v} ratio" for v in variants) + " |",
               "|---|---|" + "---|---|" * len(variants))
    for name, t in res.items():
        report.add(f"| {name} | {fmt_t(t['builtin'])} | "
                   + " | ".join(f"{fmt_t(t[v])} | {median_ratio(t[v], t['builtin']):.2f}x" for v in variants) + " |")


# ---------------------------------------------------------------------------- main
def header(device, quick):
    import detectron2
    import torchvision

    try:
        from detectron2 import _C  # noqa: F401
        d2c = "compiled _C" + ("" if device.type != "cuda" else
                               (", CUDA kernels" if not d2_rotated_missing(device) else ", no CUDA kernels"))
    except ImportError:
        d2c = "no compiled _C (pure Python)"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        dev = (f"{p.name} (compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB), "
               f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, driver-visible devices "
               f"{torch.cuda.device_count()}")
    else:
        dev = (f"none: **dry run** ({'--device cpu' if torch.cuda.is_available() else 'no CUDA device'}); "
               f"torch built with CUDA {torch.version.cuda}")
    title = "# GPU check" + (" (--quick: smaller inputs)" if quick else "") + ("" if device.type == "cuda"
                                                                              else ": dry run, CUDA parts skipped")
    return [title, "",
            "Generated by `" + " ".join(["python tools/gpu_check.py"] + sys.argv[1:]) + "`; do not edit by hand.", "",
            f"- device: {dev}",
            f"- torch {torch.__version__}, torchvision {torchvision.__version__}, detectron2 {detectron2.__version__} "
            f"({d2c}), Python {platform.python_version()}",
            *machine_info("cpu")[:1],
            f"- `CUBLAS_WORKSPACE_CONFIG={os.environ['CUBLAS_WORKSPACE_CONFIG']}` (deterministic cuBLAS)", ""]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs and fewer repetitions")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda (default where available) or cpu (a dry run)")
    parser.add_argument("--out", default=None, help="markdown file (default results/gpu.md for a full CUDA run; "
                        "--quick and dry runs write only where given)")
    parser.add_argument("--sections", nargs="*", default=["1", "2", "3", "4", "5"], choices=["1", "2", "3", "4", "5"])
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA device")
    out = args.out
    if out is None and device.type == "cuda" and not args.quick:
        out = os.path.join(REPO, "results", "gpu.md")
    torch.manual_seed(0)
    report = Report(out, header(device, args.quick))
    sections = {"1": device_path, "2": equality, "3": determinism, "4": memory, "5": speed}
    t0 = time.perf_counter()
    for key in args.sections:
        t = time.perf_counter()
        try:
            sections[key](report, device, args.quick)
        except Exception as e:  # the other sections still run and report
            traceback.print_exc()
            report.add(f"Section {key} stopped: {first_line(e)}", "")
        print(f"[section {key}: {time.perf_counter() - t:.0f} s]", file=sys.stderr, flush=True)
    report.add(f"Total {time.perf_counter() - t0:.0f} s.")
    if out:
        print(f"wrote {out}", file=sys.stderr)
    else:
        print("(not written: a dry run or --quick writes a file only with --out)", file=sys.stderr)


if __name__ == "__main__":
    main()
