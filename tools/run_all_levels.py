#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Does all-level pooling (GRoIE) help on the shapes job? Train the main job and its all-level
variants (same seed, schedule and everything else; only ``MODEL.ROI_PLUGIN.ALL_LEVELS``
differs) and write their AP to ``results/all_levels.md`` (and ``.json``).

    python tools/run_all_levels.py                                  # train all three (~45-60 min on 2 cores)
    python tools/run_all_levels.py --lock /work/team/heavy.lock     # each training run under flock
    python tools/run_all_levels.py --runs off sum                   # the main job and the sum only (~30 min)
    python tools/run_all_levels.py --skip-training                  # only collect from finished runs

Each run is ``tools/train_net.py --config-file <config>``; trailing arguments are config
overrides passed to every run (e.g. ``SOLVER.MAX_ITER 100`` for a quick look). The figures
come from each run's own files (``final_metrics.json``, ``metrics.json``), read as
``tools/run_twins.py`` reads them.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from run_twins import KEYS, _collect, _output_dir  # the twins' reading of a run's files

REPO = Path(__file__).resolve().parents[1]
BASELINE = "off (the main job: one level per ROI by the FPN rule)"
# --runs names -> run titles (the keys of RUNS)
SHORT = {"off": BASELINE, "sum": 'ALL_LEVELS "sum" (all four levels summed)',
         "conv": 'ALL_LEVELS "conv" (shared 3x3 conv + ReLU per level, sum, 3x3 conv + ReLU)'}
RUNS = {
    BASELINE: "configs/shapes/mask_rcnn_plugin.yaml",
    'ALL_LEVELS "sum" (all four levels summed)': "configs/shapes/mask_rcnn_plugin_all_levels_sum.yaml",
    'ALL_LEVELS "conv" (shared 3x3 conv + ReLU per level, sum, 3x3 conv + ReLU)':
        "configs/shapes/mask_rcnn_plugin_all_levels_conv.yaml",
}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _write(results, argv):
    out = REPO / "results"
    out.mkdir(exist_ok=True)
    (out / "all_levels.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        "# All-level pooling (GRoIE) on the shapes job",
        "",
        f"Written by `{' '.join(['python tools/run_all_levels.py', *argv])}` on {results['date']}",
        f"({results['machine']}, code at commit {results['commit']}). The runs differ only in",
        "`MODEL.ROI_PLUGIN.ALL_LEVELS` (same config, seed 42, schedule, data); COCO AP on `shapes_val`",
        "(200 images) from each run's `final_metrics.json`; s/iter is the median of the `time` entries of",
        "its `metrics.json`; wall time is the whole run (model building, training, evaluation). The runs",
        "were sequential on a shared machine, so s/iter compares them only roughly.",
        "",
        "| run | task | " + " | ".join(KEYS) + " | s/iter | iters | wall time |",
        "| --- | --- | " + " | ".join("---:" for _ in KEYS) + " | ---: | ---: | ---: |",
    ]
    for name, r in results["runs"].items():
        for task in ("bbox", "segm"):
            lines.append(f"| {name} | {task} | " + " | ".join(f"{r[task][k]:.1f}" for k in KEYS)
                         + f" | {r['s_per_iter']:.3f} | {r['iterations']} | {r['wall_time_s'] / 60:.1f} min |")
    base = results["runs"].get(BASELINE)
    if base:
        lines += ["", "| difference (variant - off) | task | " + " | ".join(KEYS) + " | s/iter ratio |",
                  "| --- | --- | " + " | ".join("---:" for _ in KEYS) + " | ---: |"]
        verdicts = []
        for name, r in results["runs"].items():
            if name == BASELINE:
                continue
            for task in ("bbox", "segm"):
                lines.append(f"| {name.split(' (')[0]} | {task} | "
                             + " | ".join(f"{r[task][k] - base[task][k]:+.1f}" for k in KEYS)
                             + f" | {r['s_per_iter'] / base['s_per_iter']:.2f}x |")
            delta = {t: r[t]["AP"] - base[t]["AP"] for t in ("bbox", "segm")}
            word = {t: "higher" if d > 0 else ("lower" if d < 0 else "equal") for t, d in delta.items()}
            verdicts.append(f"- {name.split(' (')[0]}: box AP {delta['bbox']:+.1f} ({word['bbox']}), mask AP "
                            f"{delta['segm']:+.1f} ({word['segm']}) than the main job, one run each.")
        lines += [""] + verdicts
    (out / "all_levels.md").write_text("\n".join(lines) + "\n")
    return out / "all_levels.md"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-training", action="store_true", help="collect from finished runs only")
    parser.add_argument("--lock", default="", help="run each training under `flock LOCK` (a shared machine)")
    parser.add_argument("--runs", nargs="+", choices=list(SHORT), default=list(SHORT),
                        help="which runs (default: all three)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = parser.parse_args(argv)
    runs = {}
    for name, config in RUNS.items():
        if name not in {SHORT[r] for r in args.runs}:
            continue
        if not args.skip_training:
            cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", config, *args.opts]
            if args.lock:
                cmd = ["flock", args.lock] + cmd
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=REPO, check=True)
        out_dir = _output_dir(config, args.opts)
        if not (out_dir / "final_metrics.json").is_file():
            print(f"run_all_levels.py: error: {out_dir}/final_metrics.json not found: train {config} first",
                  file=sys.stderr)
            return 2
        runs[name] = dict(_collect(out_dir), config=config, output_dir=str(out_dir.relative_to(REPO)))
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, no GPU",
        "commit": _git_commit(),
        "runs": runs,
    }
    print(_write(results, [a for a in argv if a != "--skip-training"] if args.skip_training else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
