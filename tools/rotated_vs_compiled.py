#!/usr/bin/env python
"""The plugin's pure-PyTorch rotated pooler against Detectron2's compiled ROIAlignRotated kernel.

Needs a Detectron2 whose compiled ``_C`` loads (built from source: ``python setup.py build_ext
--inplace``, then ``PYTHONPATH=<that tree>``). Compares ``ROIAlignPooler(pooler_type=
"ROIAlignRotated")`` (each sampler) with Detectron2's own ``ROIPooler(pooler_type=
"ROIAlignRotated")``, whose levels run the compiled kernel, both through their public module API:

* max abs difference of the pooled outputs, and of the feature gradients for the same
  (random) upstream gradient, between the two, and of each to the compiled kernel run in
  float64 (its CPU kernel is templated on the dtype), which says whose rounding a difference is;
* the time of a training step (forward + backward) at 1 thread: median over repetitions in
  which the implementations are interleaved (tools/timing.py's ``interleaved``), and the
  ratio plugin / compiled as the median of per-repetition ratios.

Input: tools/rotated_pooler_accuracy.py's (2 images 800x1216, P2..P5, rotated ROIs with
log-uniform sides 16..800 px, any angle, centres anywhere in the image), here with 256
channels and 256 ROIs per image; box pooler 7x7, sampling ratios 0 (Detectron2's default) and 2.

    PYTHONPATH=/path/to/detectron2:$PWD python tools/rotated_vs_compiled.py   # writes results/rotated_vs_compiled.md
"""
import argparse
import os
import subprocess
import sys

import torch

import detectron2
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import RotatedBoxes

from roi_plugin import SAMPLERS, ROIAlignPooler

import rotated_pooler_accuracy  # noqa: E402  (this folder, tools/): the input
from bench.report import machine_info  # noqa: E402
from timing import fmt_t, interleaved, ratio  # noqa: E402

SCALES = rotated_pooler_accuracy.SCALES


def compiled_detectron2() -> str:
    """Where the compiled ``_C`` comes from; exits with a one-line error where it does not load."""
    try:
        from detectron2 import _C
    except ImportError as e:
        sys.exit(f"error: this Detectron2 ({os.path.dirname(detectron2.__file__)}) has no compiled _C ({e}); "
                 "build one from source (python setup.py build_ext --inplace) and put it first on PYTHONPATH")
    root = os.path.dirname(os.path.dirname(detectron2.__file__))
    commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    where = f"{root}" + (f", commit {commit.stdout.strip()}" if commit.returncode == 0 else "")
    return f"detectron2 {detectron2.__version__} with compiled _C ({os.path.basename(_C.__file__)}) from {where}"


def float64_boxes(b: torch.Tensor) -> RotatedBoxes:
    """RotatedBoxes holding float64 coordinates (its constructor casts to float32), so that
    Detectron2's ROIPooler runs its kernel in float64 on float64 maps."""
    boxes = RotatedBoxes(b)
    boxes.tensor = b.double()
    return boxes


def training_step(pooler, feats, boxes, grad):
    """A closure: forward and backward of ``pooler`` on fresh leaf copies of ``feats``;
    returns (output, feature gradients; zeros for a level no ROI reached)."""
    def step():
        x = [f.detach().requires_grad_() for f in feats]
        out = pooler(x, boxes)
        out.backward(grad)
        return out.detach(), [torch.zeros_like(f) if f.grad is None else f.grad for f in x]
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "results",
                                                      "rotated_vs_compiled.md"))
    parser.add_argument("--rois", type=int, default=256, help="ROIs per image")
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (after one warm-up)")
    parser.add_argument("--ratios", type=int, nargs="*", default=[0, 2], help="sampling ratios")
    args = parser.parse_args()
    d2_info = compiled_detectron2()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    feats, boxes = rotated_pooler_accuracy.make_input(rois=args.rois, channels=args.channels)
    grad = torch.randn(2 * args.rois, args.channels, 7, 7, generator=torch.Generator().manual_seed(1))
    rows = []
    for sr in args.ratios:
        steps = {"compiled": training_step(ROIPooler(7, SCALES, sr, "ROIAlignRotated"), feats,
                                           [RotatedBoxes(b) for b in boxes], grad)}
        for s in SAMPLERS:
            steps[s] = training_step(ROIAlignPooler(7, SCALES, sr, "ROIAlignRotated", sampler=s), feats, boxes, grad)
        ref_out, ref_grads = steps["compiled"]()
        f64_out, f64_grads = training_step(ROIPooler(7, SCALES, sr, "ROIAlignRotated"), [f.double() for f in feats],
                                           [float64_boxes(b) for b in boxes], grad.double())()

        def diffs(out, grads, ref, ref_grads):
            return ((out.double() - ref).abs().max().item(),
                    max((a.double() - b).abs().max().item() for a, b in zip(grads, ref_grads)))

        own_out, own_grad = diffs(ref_out, ref_grads, f64_out, f64_grads)
        for s in SAMPLERS:
            out, grads = steps[s]()
            d_out, d_grad = diffs(out, grads, ref_out, ref_grads)
            e_out, e_grad = diffs(out, grads, f64_out, f64_grads)
            rows.append([sr, s, d_out, d_grad, f"{e_out:.1e} / {own_out:.1e}", f"{e_grad:.1e} / {own_grad:.1e}"])
        times = interleaved(steps, args.reps, 1, "cpu")
        for row in rows[-len(SAMPLERS):]:
            s = row[1]
            row += [fmt_t(times["compiled"]), fmt_t(times[s]), f"{ratio(times[s], times['compiled']):.2f}x"]
            print(" | ".join(f"{v:.1e}" if isinstance(v, float) else str(v) for v in row), flush=True)
    load_after = os.getloadavg()
    lines = [
        "# Rotated pooler: pure PyTorch against Detectron2's compiled ROIAlignRotated",
        "",
        f"Generated by `PYTHONPATH={os.environ.get('PYTHONPATH', '').replace(os.getcwd(), '$PWD')} "
        + " ".join(["python tools/rotated_vs_compiled.py"] + sys.argv[1:]) + "`; do not edit by hand.",
        "",
        *machine_info("cpu"),
        f"- {d2_info}",
        f"- input: 2 images 800x1216, P2..P5 with {args.channels} channels (float32, ~N(0, 1)), {args.rois} rotated "
        "ROIs per image (sides log-uniform 16..800 px, angles uniform in [-180, 180), centres uniform over the "
        "image), box pooler 7x7; the same random upstream gradient for every implementation",
        "- compiled: Detectron2's `ROIPooler(pooler_type=\"ROIAlignRotated\")` (its levels run "
        "`torch.ops.detectron2.roi_align_rotated_forward/backward`); plugin: "
        "`ROIAlignPooler(pooler_type=\"ROIAlignRotated\", sampler=...)`",
        f"- time: one training step (forward + backward) at `torch.set_num_threads(1)`, {args.reps} repetitions "
        "after one warm-up, implementations interleaved; median (min-max) in ms; ratio = median over repetitions "
        "of plugin / compiled of the same repetition",
        f"- machine load (1-min load average) {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"({os.cpu_count()} logical CPUs, shared)",
        "",
        "Max abs differences: plugin vs compiled (both float32), then each against the compiled kernel run in "
        "float64 on the same input (plugin / compiled), which shows whose rounding the difference is.",
        "",
        "| sampling_ratio | sampler | output, plugin vs compiled | feature gradients, plugin vs compiled "
        "| output vs float64 kernel, plugin / compiled | gradients vs float64 kernel, plugin / compiled "
        "| compiled ms | plugin ms | time plugin / compiled |",
        "|" + "---|" * 9,
    ]
    rotated_pooler_accuracy.pooler_accuracy.write_table(lines, rows, args.out)


if __name__ == "__main__":
    main()
