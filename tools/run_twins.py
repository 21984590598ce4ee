#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Train the shapes twins (same seed and schedule, only the ROI heads differ: the plugin's heads
with each sampler, and Detectron2's built-in heads) and write their figures to
``results/shapes_twins.md`` (and ``.json``).

    python tools/run_twins.py                  # train all three (about 30 min on 2 cores), then write
    python tools/run_twins.py --skip-training  # only collect from finished runs in output/

Each run is ``tools/train_net.py --config-file <config>``; trailing arguments are config
overrides passed to every run (e.g. ``SOLVER.MAX_ITER 100`` for a quick look).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The built-in heads come last: every plugin run is compared with them.
BUILTIN = "builtin (StandardROIHeads + FastRCNNConvFCHead + ROIAlignV2)"
TWINS = {
    "plugin, main job (PluginROIHeads, gather sampler + TwoMLPHead + FastRCNNPredictor)":
        "configs/shapes/mask_rcnn_plugin.yaml",
    "plugin (GridSampleROIHeads + TwoMLPHead + FastRCNNPredictor)": "configs/shapes/mask_rcnn_gridsample.yaml",
    BUILTIN: "configs/shapes/mask_rcnn_builtin.yaml",
}
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MAX_GAP = 2.0  # the bar: twins within 2 AP points


def _output_dir(config, opts):
    """OUTPUT_DIR of a config: the last override if given, else the YAML's own value."""
    for i in range(len(opts) - 2, -1, -1):
        if opts[i] == "OUTPUT_DIR":
            return REPO / opts[i + 1]
    for line in (REPO / config).read_text().splitlines():
        if line.startswith("OUTPUT_DIR:"):
            return REPO / line.split(":", 1)[1].strip().strip('"')
    raise ValueError(f"{config} sets no OUTPUT_DIR")


def _collect(out_dir):
    final = json.loads((out_dir / "final_metrics.json").read_text())
    rows = [json.loads(line) for line in (out_dir / "metrics.json").read_text().splitlines() if line.strip()]
    times = [r["time"] for r in rows if "time" in r]
    last_iter = max(r["iteration"] for r in rows if "total_loss" in r)  # not the eval row
    return {
        "bbox": {k: final["results"]["bbox"][k] for k in KEYS},
        "segm": {k: final["results"]["segm"][k] for k in KEYS},
        # Median over the logged windows (each already a median over its iterations).
        "s_per_iter": statistics.median(times) if times else float("nan"),
        "iterations": last_iter + 1,
        "wall_time_s": final["wall_time_s"],
    }


def _write(results, opts):
    out = REPO / "results"
    out.mkdir(exist_ok=True)
    (out / "shapes_twins.json").write_text(json.dumps(results, indent=1) + "\n")
    names = list(results["runs"])
    lines = [
        "# Shapes twins: plugin ROI heads vs Detectron2's built-in ROI heads",
        "",
        f"Written by `{' '.join(['python tools/run_twins.py', *opts])}` on {results['date']}",
        f"({results['machine']}). Same config, seed (SEED 42) and schedule; only the ROI heads differ.",
        "COCO AP on `shapes_val` (200 images), from each run's `final_metrics.json`; s/iter is the",
        "median of the `time` entries of its `metrics.json`; wall time is the whole run (train + eval).",
        "The runs are sequential, so their s/iter ratios are indicative only; BENCHMARKS.md times the",
        "same model with both heads side by side.",
        "",
        "| run | task | " + " | ".join(KEYS) + " | s/iter | iters | wall time |",
        "| --- | --- | " + " | ".join("---:" for _ in KEYS) + " | ---: | ---: | ---: |",
    ]
    for name in names:
        r = results["runs"][name]
        for task in ("bbox", "segm"):
            lines.append(
                f"| {name} | {task} | " + " | ".join(f"{r[task][k]:.1f}" for k in KEYS)
                + f" | {r['s_per_iter']:.3f} | {r['iterations']} | {r['wall_time_s'] / 60:.1f} min |"
            )
    if BUILTIN in results["runs"]:
        b = results["runs"][BUILTIN]
        lines += ["", "| difference (plugin run - builtin) | task | " + " | ".join(KEYS) + " | s/iter ratio |",
                  "| --- | --- | " + " | ".join("---:" for _ in KEYS) + " | ---: |"]
        verdicts = []
        for name in names:
            if name == BUILTIN:
                continue
            a = results["runs"][name]
            for task in ("bbox", "segm"):
                lines.append(
                    f"| {name.split(' (')[0]}, {a['config'].rsplit('/', 1)[-1]} | {task} | "
                    + " | ".join(f"{a[task][k] - b[task][k]:+.1f}" for k in KEYS)
                    + f" | {a['s_per_iter'] / b['s_per_iter']:.2f}x |"
                )
            gaps = {t: abs(a[t]["AP"] - b[t]["AP"]) for t in ("bbox", "segm")}
            verdict = "within" if max(gaps.values()) <= MAX_GAP else "NOT within"
            verdicts.append(f"- {a['config'].rsplit('/', 1)[-1]}: AP gap to the built-in heads bbox "
                            f"{gaps['bbox']:.1f}, segm {gaps['segm']:.1f} points: {verdict} the {MAX_GAP:g}-point bar.")
        lines += [""] + verdicts
    (out / "shapes_twins.md").write_text("\n".join(lines) + "\n")
    return out / "shapes_twins.md"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-training", action="store_true", help="collect from finished runs only")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = parser.parse_args(argv)
    runs = {}
    for name, config in TWINS.items():
        if not args.skip_training:
            cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", config, *args.opts]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=REPO, check=True)
        out_dir = _output_dir(config, args.opts)
        if not (out_dir / "final_metrics.json").is_file():
            print(f"run_twins.py: error: {out_dir}/final_metrics.json not found: train {config} first",
                  file=sys.stderr)
            return 2
        runs[name] = dict(_collect(out_dir), config=config, output_dir=str(out_dir.relative_to(REPO)))
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, no GPU",
        "runs": runs,
    }
    print(_write(results, args.opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
