#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Benchmark roi_plugin's ROIAlignPooler against Detectron2's ROIPooler, and whole Mask R-CNN,
on an idle and on a busy machine; writes BENCHMARKS.md.

Measures, side by side in one process and after warm-up, in each of three conditions
(``1thread``: one intra-op thread; ``idle``: two; ``busy``: two while a process started by the
benchmark spins on one core):

* the pooler, forward and forward+backward, for training (2 images 800x1216, P2..P5 with 256
  channels, 512 ROIs per image with log-uniform sizes 16..800 px, sampling ratio 0 and 2),
  inference (1000 ROIs per image, no grad, ratio 0), the mask pooler (14x14, 64 ROIs per
  image) and a few-ROI case (16 per image): the default ``gather`` sampler (also under
  ``torch.compile``, and its plan alone) against Detectron2's ``ROIPooler`` (``ROIAlignV2``),
  with the peak memory of each case (each in a process of its own); the ``grid_sample``
  sampler and the notebook's per-ROI ``expand`` design in the idle condition only;
* one training iteration and one inference pass of the shapes demo's Mask R-CNN R18-FPN with
  roi_plugin's heads against the built-in heads, same weights and input, also with
  ``torch.compile(model.roi_heads)``, in every condition, and of R50-FPN at 800x1216 in the
  idle one;
* memory as a new user meets it: the first training step's peak memory (a fresh process, the
  default allocator) against ``ROIPooler``'s, and the memory-bound cases (many samples per bin
  for a small output, ``tools/bench/bounded.py``), cold and warm.

Repetitions of the implementations compared are interleaved (A B C, B C A, ...) so that load
from other processes hits all of them alike; ratios are the median of per-repetition ratios.
The written file holds the machine, the versions, the exact command, the targets against
their measured ratios and a table per condition; what the figures mean is
docs/performance.md's. The parts: ``tools/bench/`` (cases, conditions, memory, models,
measure, report, profiling) and ``tools/timing.py`` (interleaved timing).

Usage::

    python tools/benchmark.py              # full run (about 25 min on 2 CPU cores), writes BENCHMARKS.md
    python tools/benchmark.py --quick      # smaller sizes, a few minutes (one condition ~1.5 min), prints only
    python tools/benchmark.py --profile gather:train_r2:fwd+bwd --conditions busy   # a profile
    python tools/benchmark.py --conditions idle --cases none --no-model --cold-runs 5 \
        --out results/memory.md     # memory only: first calls and the memory-bound cases
"""
import argparse
import os
import shlex
import sys

from bench.bounded import BOUNDED_NAMES
from bench.cases import CASE_NAMES, IMPL_NAMES, MODES, image_size
from bench.conditions import CONDITIONS
from bench.measure import MEMORY_IN_QUICK, default_reps, run_conditions
from bench.models import MODEL_CASES
from bench.profiling import profile_summary
from bench.report import render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "BENCHMARKS.md")


def parse_args(argv=None):
    quick_hw = "x".join(map(str, image_size(True)))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"smaller sizes ({quick_hw} images, a quarter of the ROIs, the smaller whole-model "
                        f"images), {default_reps(True)} pooler and 1 whole-model repetitions, peak memory of "
                        f"{':'.join(MEMORY_IN_QUICK)} only; prints, writes a file only with --out; "
                        "a few minutes on 2 CPU cores (one condition ~1.5 min)")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS),
                        metavar="COND", help=f"conditions to measure, in this order: {', '.join(CONDITIONS)} "
                        "(default: all three)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--reps", type=int, default=0,
                        help=f"pooler repetitions (default {default_reps(False)}, --quick {default_reps(True)})")
    parser.add_argument("--model-reps", type=int, default=0,
                        help="whole-model repetitions (default: "
                        + ", ".join(f"{m.reps} for {m.key}" for m in MODEL_CASES) + "; --quick 1)")
    parser.add_argument("--cases", nargs="+", choices=CASE_NAMES + ("none",), metavar="CASE",
                        help=f"only these pooler cases: {', '.join(CASE_NAMES)}, or none (default: all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements (a process each)")
    parser.add_argument("--cold-runs", type=int, default=-1,
                        help="runs of the first-call memory of a training step (train_r0 fwd+bwd, a fresh process "
                        "per run and implementation, the default allocator) in each condition; 0 for none "
                        "(default 3; --quick and --no-memory: none)")
    parser.add_argument("--bounded", nargs="+", choices=BOUNDED_NAMES + ("none",), metavar="CASE",
                        help=f"memory-bound cases, cold and warm, in the idle condition (or the first one): "
                        f"{', '.join(BOUNDED_NAMES)}, or none (default: all; --quick and --no-memory: none)")
    parser.add_argument("--no-model", action="store_true", help="skip the whole-model benchmark")
    parser.add_argument("--models", nargs="+", choices=[m.key for m in MODEL_CASES], metavar="MODEL",
                        help="only these whole models (default: all): "
                        + ", ".join(f"{m.key} ({m.title}{', idle condition only' if m.idle_only else ''})"
                                    for m in MODEL_CASES))
    parser.add_argument("--out", default=None, help="markdown file to write (default BENCHMARKS.md in the repo; "
                        "--quick writes none unless given)")
    parser.add_argument("--profile", metavar="IMPL:CASE:MODE", default=None,
                        help="profile one step (torch.profiler, self CPU time) in each condition, e.g. "
                        "gather:train_r2:fwd+bwd, print a markdown summary and exit")
    parser.add_argument("--profile-md", default="", help="with --profile: append the summary to this file")
    parser.add_argument("--label", default="", help="with --profile: the summary's title (default IMPL)")
    parser.add_argument("--verbose", action="store_true", help="with --profile: full profiler tables on stderr")
    args = parser.parse_args(argv)
    if args.profile:
        parts = args.profile.split(":")
        if len(parts) != 3 or parts[0] not in IMPL_NAMES or parts[1] not in CASE_NAMES or parts[2] not in MODES:
            parser.error(f"--profile {args.profile}: expected IMPL:CASE:MODE, IMPL one of {', '.join(IMPL_NAMES)}; "
                         f"CASE one of {', '.join(CASE_NAMES)}; MODE one of {', '.join(MODES)}")
    return args


def command(argv) -> str:
    """The command line as the written file's header records it."""
    return " ".join(["python tools/benchmark.py"] + ([shlex.join(argv)] if argv else []))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    conditions = [CONDITIONS[c] for c in args.conditions]
    if args.profile:
        text = profile_summary(args.profile, conditions, quick=args.quick, device=args.device, label=args.label,
                               verbose=args.verbose)
        print(text)
        if args.profile_md:
            with open(args.profile_md, "a") as f:
                f.write(text + "\n")
        return
    reps = args.reps or default_reps(args.quick)
    cold_runs = 0 if args.no_memory else (args.cold_runs if args.cold_runs >= 0 else (0 if args.quick else 3))
    if args.bounded:
        bounded = [] if "none" in args.bounded else args.bounded
    else:
        bounded = [] if args.quick or args.no_memory else None
    records = run_conditions(conditions, quick=args.quick, device=args.device, reps=reps, cases=args.cases,
                             memory=not args.no_memory, model=not args.no_model, model_reps=args.model_reps,
                             models=args.models, cold_runs=cold_runs, bounded=bounded)
    text = render(command(argv), args.quick, args.device, reps, conditions, records)
    print(text)
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    if out:
        with open(out, "w") as f:
            f.write(text)
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
