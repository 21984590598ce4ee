#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Bit-for-bit comparison of the pooler (both samplers, upright and rotated boxes): between two
versions of the code, and between the ways one version runs it (eager, compiled, scripted, traced).

A refactor or a speed-up of the pooler should leave every output and feature gradient
unchanged to the bit. Save them with one checkout, compare with another::

    git worktree add /tmp/base <commit>
    PYTHONPATH=/tmp/base python tools/pooler_bitwise_check.py save /tmp/base.pt
    python tools/pooler_bitwise_check.py compare /tmp/base.pt     # exit 1 on any difference

and check that ``torch.compile`` (inductor, static and ``dynamic=True`` shapes), TorchScript
(``torch.jit.script``) and ``torch.jit.trace`` give the eager outputs and gradients bit for bit::

    python tools/pooler_bitwise_check.py modes                     # all four
    python tools/pooler_bitwise_check.py modes --modes scripted traced

For each sampler (``gather``, ``grid_sample``), 62 upright cases: sampling ratios 0-3, ROIAlign
and ROIAlignV2, outputs 7, 14 and (7, 5), four-level and single-level poolers, float64, half and
bfloat16 maps, boxes crossing and spilling over the border, tiny and zero-size boxes, a few and
600 ROIs; and 8 rotated cases (``ROIAlignRotated``: ratios 0 and 2, outputs 7 and 14, angles
from -180 to 180 degrees, centres spilling over the border). Boxes of ~1e6 px are left out: up to
3d9ac33 such a box switched its whole grid-size group to float64 coordinates, so other ROIs of
the group differed from torchvision by rounding (and one legacy border box by 0.6).
A level that no ROI reads had no gradient (``None``) before the pooler became an operator and
has a zero one since (as ``ROIPooler``'s): ``compare`` counts the two as equal and says how
many there were.
"""
import argparse
import math
import sys

from typing import Tuple

import torch

from detectron2.structures import Boxes, RotatedBoxes
from roi_plugin import SAMPLERS, ROIAlignPooler

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
BORDER = [  # on the image's border, zero-size, outside, tiny
    torch.tensor([[0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0], [10.0, 10.0, 10.0, 40.0], [-1e4, -1e4, 1e4, 1e4],
                  [0.0, 0.0, 320.0, 256.0], [318.0, 250.0, 320.0, 256.0], [-50.0, -50.0, -10.0, -10.0]]),
    torch.tensor([[1.0, 2.0, 3.0, 4.0], [100.5, 20.25, 300.75, 200.125]]),
]


def features(batch, height, width, channels, dtype, scales):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, channels, math.ceil(height * s), math.ceil(width * s), generator=g).to(dtype)
            for s in scales]


def boxes(batch, n, height, width, lo, hi, spill):
    """n boxes per image, sides log-uniform in [lo, hi], centres spilling ``spill`` beyond the image."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(batch):
        side = torch.exp(torch.empty(n, 2).uniform_(math.log(lo), math.log(hi), generator=g))
        cx = torch.rand(n, generator=g) * width * (1 + 2 * spill) - spill * width
        cy = torch.rand(n, generator=g) * height * (1 + 2 * spill) - spill * height
        out.append(torch.stack([cx - side[:, 0] / 2, cy - side[:, 1] / 2, cx + side[:, 0] / 2, cy + side[:, 1] / 2], 1))
    return out


def cases():
    """(name, ratio, pooler type, output, batch, H, W, channels, dtype, ROIs, spill, lo, hi, border boxes)."""
    for ratio in (0, 1, 2, 3):
        for ptype in ("ROIAlignV2", "ROIAlign"):
            for out in (7, 14, (7, 5)):
                yield (f"r{ratio}-{ptype}-{out}", ratio, ptype, out, 2, 256, 320, 16, torch.float32, 60, 0.0, 2, 900, True)
    yield ("f64", 0, "ROIAlignV2", 7, 2, 128, 160, 4, torch.float64, 30, 0.2, 1, 600, False)
    yield ("half", 0, "ROIAlignV2", 7, 2, 128, 160, 8, torch.float16, 30, 0.2, 1, 600, False)
    yield ("bf16", 2, "ROIAlignV2", 14, 2, 128, 160, 8, torch.bfloat16, 30, 0.2, 1, 600, False)
    yield ("spill", 0, "ROIAlignV2", 7, 3, 200, 240, 8, torch.float32, 80, 0.5, 1, 1500, False)
    yield ("tiny", 0, "ROIAlignV2", 7, 1, 64, 64, 8, torch.float32, 40, 0.1, 0.01, 5, False)
    yield ("few", 0, "ROIAlignV2", 14, 2, 256, 320, 8, torch.float32, 2, 0.0, 20, 100, False)
    yield ("many", 0, "ROIAlignV2", 7, 2, 400, 608, 32, torch.float32, 300, 0.0, 16, 800, False)


def rotated(upright):
    """Rotated boxes (x_ctr, y_ctr, w, h, angle) with the centres and sides of ``upright``."""
    g = torch.Generator().manual_seed(2)
    out = []
    for b in upright:
        angle = torch.rand(len(b), generator=g) * 360 - 180
        out.append(torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0],
                                b[:, 3] - b[:, 1], angle], 1))
    return out


def rotated_cases():
    """As :func:`cases`, for ``ROIAlignRotated``."""
    for ratio in (0, 2):
        for out in (7, 14):
            yield (f"rot-r{ratio}-{out}", ratio, "ROIAlignRotated", out, 2, 192, 256, 8, torch.float32, 30, 0.2, 2, 500, False)


MODES = ("eager", "compiled", "compiled-dynamic", "scripted", "traced")


class _ListCall(torch.nn.Module):
    """The pooler with one tensor argument per map and per image (what ``torch.jit.trace`` takes)."""

    def __init__(self, pooler, levels):
        super().__init__()
        self.pooler, self.levels = pooler, levels

    def forward(self, *args):
        return self.pooler(list(args[:self.levels]), list(args[self.levels:]))


def runner(pooler, mode: str, x, bx):
    """A callable ``(x, bx) -> pooled`` running ``pooler`` the ``mode`` way."""
    if mode == "eager":
        return pooler
    if mode.startswith("compiled"):
        torch._dynamo.reset()  # one pooler per case: stay clear of the recompile limit
        return torch.compile(pooler, dynamic=True if mode == "compiled-dynamic" else None)
    if mode == "scripted":
        scripted = torch.jit.script(pooler)
        kind = RotatedBoxes if pooler.rotated else Boxes
        return lambda x, bx: scripted(x, [kind(b) for b in bx])
    traced = torch.jit.trace(_ListCall(pooler, len(x)), (*x, *bx), check_trace=False)
    return lambda x, bx: traced(*x, *bx)


def pool(sampler, ratio, ptype, out, scales, x, bx, mode="eager"):
    """Output and feature gradients of one pooler call, run the ``mode`` way."""
    pooler = ROIAlignPooler(out, scales, ratio, ptype, sampler=sampler)
    y = runner(pooler, mode, x, bx)(x, bx)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(y.dtype))
    return [y.detach()] + [f.grad for f in x]


def run_all(mode: str = "eager"):
    """{case: [output, gradient of each level]} over all cases and both samplers, each with 4
    levels and with 1."""
    results = {}
    for sampler in SAMPLERS:
        for name, ratio, ptype, out, b, h, w, c, dtype, n, spill, lo, hi, border in (*cases(), *rotated_cases()):
            for single in (False, True):
                scales = SCALES[2:3] if single else SCALES
                x = [f.requires_grad_() for f in features(b, h, w, c, dtype, scales)]
                bx = boxes(b, n, h, w, lo, hi, spill)
                if border:
                    bx = [torch.cat([bx[0], BORDER[1]]), torch.cat([bx[1], BORDER[0]])]
                if ptype == "ROIAlignRotated":
                    bx = rotated(bx)
                key = f"{sampler}-{name}" + ("-single" if single else "")
                results[key] = pool(sampler, ratio, ptype, out, scales, x, bx, mode)
    return results


def differences(results, ref) -> Tuple[int, int]:
    """Print each tensor of ``results`` that differs from ``ref``; (differing, None-vs-zero) counts."""
    bad = none_vs_zero = 0
    for key, tensors in results.items():
        for i, (a, r) in enumerate(zip(tensors, ref[key])):
            if (a is None) != (r is None) and not bool((r if a is None else a).eq(0).all()):
                bad += 1
                print(f"DIFFERS: {key} gradient of level {i - 1}: None in one, non-zero in the other")
            elif (a is None) != (r is None):
                none_vs_zero += 1
            elif a is not None and not torch.equal(a, r):
                bad += 1
                diff = (a.double() - r.double()).abs().max().item()
                print(f"DIFFERS: {key} {'output' if i == 0 else f'gradient of level {i - 1}'}: max |diff| {diff}")
    return bad, none_vs_zero


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["save", "compare", "modes"])
    p.add_argument("path", nargs="?", help="file of saved results (save, compare)")
    p.add_argument("--modes", nargs="*", default=list(MODES[1:]), choices=list(MODES[1:]),
                   help="with 'modes': the ways to run the pooler against eager (default: all)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.mode != "modes" and not args.path:
        p.error(f"{args.mode} needs a path")
    torch.set_num_threads(args.threads)
    results = run_all()
    if args.mode == "save":
        torch.save(results, args.path)
        print(f"saved {len(results)} cases to {args.path}")
        return 0
    failed = False
    if args.mode == "compare":
        bad, nz = differences(results, torch.load(args.path))
        note = f" ({nz} gradients None in one, zeros in the other)" if nz else ""
        print(f"eager vs {args.path}: compared {len(results)} cases: "
              f"{'all bit-identical' if not bad else f'{bad} tensors differ'}{note}")
        failed = bool(bad)
    else:
        for mode in args.modes:
            bad, nz = differences(run_all(mode), results)
            print(f"{mode} vs eager: compared {len(results)} cases: "
                  f"{'all bit-identical' if not bad and not nz else f'{bad + nz} tensors differ'}", flush=True)
            failed |= bool(bad or nz)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
