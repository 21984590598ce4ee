#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Train twins (same config, seed and schedule; only the ROI heads differ: the plugin's heads
and Detectron2's built-in heads) and write their figures to ``results/<set>_twins.md`` (and
``.json``). Two sets:

* ``shapes`` (default): the shapes Mask R-CNN with the plugin's heads and each sampler, and with
  Detectron2's ``StandardROIHeads``; ``results/shapes_twins.md``.
* ``rotated``: the rotated Faster R-CNN on shapes_rotated with ``PluginRROIHeads`` (on the
  Detectron2 this script runs with, e.g. the pure-Python wheel) and with Detectron2's own
  ``RROIHeads``, whose ``ROIAlignRotated`` exists only in a compiled ``_C``: that run gets
  ``--detectron2-src DIR`` (a source tree built with ``python setup.py build_ext --inplace``,
  docs/testing.md) first on its ``PYTHONPATH``; ``results/rotated_twins.md``.

    python tools/run_twins.py                  # the 3 shapes twins (about 45 min on 2 cores), then write
    python tools/run_twins.py --skip-training  # only collect from finished runs in output/
    python tools/run_twins.py --set rotated --detectron2-src /work/d2src   # about 30 min

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
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MAX_GAP = 2.0  # the issues' bar: twins within 2 AP points

# set -> runs (name -> config, the built-in heads' run last: every plugin run is compared with
# it), the runs that need a compiled Detectron2, and the words of the results file's header
SETS = {
    "shapes": {
        "runs": {
            "plugin, main job (PluginROIHeads, gather sampler + TwoMLPHead + FastRCNNPredictor)":
                "configs/shapes/mask_rcnn_plugin.yaml",
            "plugin (GridSampleROIHeads + TwoMLPHead + FastRCNNPredictor)":
                "configs/shapes/mask_rcnn_gridsample.yaml",
            "builtin (StandardROIHeads + FastRCNNConvFCHead + ROIAlignV2)":
                "configs/shapes/mask_rcnn_builtin.yaml",
        },
        "compiled": (),
        "title": "Shapes twins: plugin ROI heads vs Detectron2's built-in ROI heads",
        "evaluation": "COCO AP on `shapes_val` (200 images)",
    },
    "rotated": {
        "runs": {
            "plugin (PluginRROIHeads: ROIAlignRotated gather pooler + TwoMLPHead + RotatedFastRCNNPredictor)":
                "configs/rotated/rrcnn_R_18_FPN_plugin.yaml",
            "builtin (RROIHeads: ROIPooler ROIAlignRotated + FastRCNNConvFCHead), compiled Detectron2":
                "configs/rotated/rrcnn_R_18_FPN_builtin.yaml",
        },
        "compiled": ("configs/rotated/rrcnn_R_18_FPN_builtin.yaml",),
        "title": "Rotated twins: PluginRROIHeads vs Detectron2's RROIHeads",
        "evaluation": "COCO box AP with rotated IoU (Detectron2's `RotatedCOCOEvaluator`) on "
                      "`shapes_rotated_val` (200 images)",
    },
}


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
    tasks = [t for t in ("bbox", "segm") if t in final["results"]]
    return {
        **{t: {k: final["results"][t][k] for k in KEYS} for t in tasks},
        # Median over the logged windows (each already a median over its iterations).
        "s_per_iter": statistics.median(times) if times else float("nan"),
        "iterations": last_iter + 1,
        "wall_time_s": final["wall_time_s"],
    }


def _detectron2_of(src):
    """Which Detectron2 a run used, in words."""
    if not src:
        code = "import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
        return f"detectron2 {out.stdout.strip()} (this Python's)"
    rev = subprocess.run(["git", "-C", str(src), "rev-parse", "--short=12", "HEAD"],
                         capture_output=True, text=True)
    at = f" at {rev.stdout.strip()}" if rev.returncode == 0 else ""
    return f"detectron2 built from source{at} with its compiled _C ({src})"


def _write(name, results, opts):
    spec = SETS[name]
    out = REPO / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}_twins.json").write_text(json.dumps(results, indent=1) + "\n")
    names = list(results["runs"])
    builtin = names[-1]
    tasks = [t for t in ("bbox", "segm") if t in results["runs"][builtin]]
    command = ["python tools/run_twins.py"] + (["--set", name] if name != "shapes" else [])
    sources = [r["detectron2_src"] for r in results["runs"].values() if r.get("detectron2_src")]
    if sources:
        command += ["--detectron2-src", sources[0]]
    lines = [
        f"# {spec['title']}",
        "",
        f"Written by `{' '.join(command + list(opts))}` on {results['date']}",
        f"({results['machine']}). Same config, seed (SEED 42) and schedule; only the ROI heads differ.",
        f"{spec['evaluation']}, from each run's `final_metrics.json`; s/iter is the",
        "median of the `time` entries of its `metrics.json`; wall time is the whole run (train + eval).",
        "The runs are sequential, so their s/iter ratios are indicative only; BENCHMARKS.md times the",
        "same model with both heads side by side.",
    ]
    if spec["compiled"]:
        lines += ["", "Detectron2 of each run:", ""]
        lines += [f"- {n.split(' (')[0]}: {results['runs'][n]['detectron2']}" for n in names]
    lines += [
        "",
        "| run | task | " + " | ".join(KEYS) + " | s/iter | iters | wall time |",
        "| --- | --- | " + " | ".join("---:" for _ in KEYS) + " | ---: | ---: | ---: |",
    ]
    for n in names:
        r = results["runs"][n]
        for task in tasks:
            lines.append(
                f"| {n} | {task} | " + " | ".join(f"{r[task][k]:.1f}" for k in KEYS)
                + f" | {r['s_per_iter']:.3f} | {r['iterations']} | {r['wall_time_s'] / 60:.1f} min |"
            )
    b = results["runs"][builtin]
    lines += ["", "| difference (plugin run - builtin) | task | " + " | ".join(KEYS) + " | s/iter ratio |",
              "| --- | --- | " + " | ".join("---:" for _ in KEYS) + " | ---: |"]
    verdicts = []
    for n in names[:-1]:
        a = results["runs"][n]
        for task in tasks:
            lines.append(
                f"| {n.split(' (')[0]}, {a['config'].rsplit('/', 1)[-1]} | {task} | "
                + " | ".join(f"{a[task][k] - b[task][k]:+.1f}" for k in KEYS)
                + f" | {a['s_per_iter'] / b['s_per_iter']:.2f}x |"
            )
        gaps = {t: abs(a[t]["AP"] - b[t]["AP"]) for t in tasks}
        verdict = "within" if max(gaps.values()) <= MAX_GAP else "NOT within"
        verdicts.append(f"- {a['config'].rsplit('/', 1)[-1]}: AP gap to the built-in heads "
                        + ", ".join(f"{t} {g:.1f}" for t, g in gaps.items())
                        + f" points: {verdict} the {MAX_GAP:g}-point bar.")
    lines += [""] + verdicts
    path = out / f"{name}_twins.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=sorted(SETS), default="shapes", help="which twins")
    parser.add_argument("--skip-training", action="store_true", help="collect from finished runs only")
    parser.add_argument("--detectron2-src", default="", metavar="DIR",
                        help="a Detectron2 source tree built with its _C, for the runs that need it "
                        "(--set rotated)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = parser.parse_args(argv)
    spec = SETS[args.set]
    src = os.path.abspath(args.detectron2_src) if args.detectron2_src else ""
    if spec["compiled"] and not args.skip_training:
        if not src or not list(Path(src, "detectron2").glob("_C*.so")):
            missing = f"; {src}/detectron2 has no _C*.so" if src else ""
            print(f"run_twins.py: error: --set {args.set} trains {', '.join(spec['compiled'])} with "
                  f"Detectron2's compiled _C: give --detectron2-src DIR, a source tree built with "
                  f"`python setup.py build_ext --inplace` (docs/testing.md){missing}", file=sys.stderr)
            return 2
    runs = {}
    for name, config in spec["runs"].items():
        compiled = config in spec["compiled"]
        if not args.skip_training:
            cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", config, *args.opts]
            env = dict(os.environ)
            if compiled:
                paths = [src, str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
                env["PYTHONPATH"] = os.pathsep.join(paths)
            print("+", f"PYTHONPATH={env['PYTHONPATH']} " if compiled else "", " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=REPO, check=True, env=env)
        out_dir = _output_dir(config, args.opts)
        if not (out_dir / "final_metrics.json").is_file():
            print(f"run_twins.py: error: {out_dir}/final_metrics.json not found: train {config} first",
                  file=sys.stderr)
            return 2
        runs[name] = dict(_collect(out_dir), config=config, output_dir=str(out_dir.relative_to(REPO)))
        if spec["compiled"]:
            previous = {}
            old = REPO / "results" / f"{args.set}_twins.json"
            if args.skip_training and old.is_file():  # keep what the training run recorded
                previous = json.loads(old.read_text())["runs"].get(name, {})
            runs[name]["detectron2_src"] = previous.get("detectron2_src", src if compiled else "")
            runs[name]["detectron2"] = previous.get("detectron2") or _detectron2_of(src if compiled else "")
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, no GPU",
        "runs": runs,
    }
    print(_write(args.set, results, args.opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
