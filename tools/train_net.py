#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Train and evaluate a Mask R-CNN with roi_plugin's ROI heads (Detectron2's train_net, thin).

    python tools/train_net.py --config-file configs/shapes/mask_rcnn_plugin.yaml
    python tools/train_net.py --config-file ... --num-gpus 2          # 2 processes (gloo on CPU)
    python tools/train_net.py --config-file ... --resume               # continue an interrupted run
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file ... \\
        --dataset mine_train:train.json:images/ --dataset mine_val:val.json:images/ \\
        DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_val',)" MODEL.ROI_HEADS.NUM_CLASSES 3

Importing ``roi_plugin`` registers the heads; importing ``roi_plugin.data`` registers the
built-in ``shapes_train`` / ``shapes_val`` datasets (generated on first use). The trainer, the
config checks and ``--dataset`` live in :mod:`roi_plugin.engine.train`.
"""
import json
import logging
import os
import sys
import time
import warnings

# Detectron2 0.7 still calls torch.jit.script at import; on recent torch that prints two
# FutureWarnings before anything else, which would bury one-line error messages.
warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)

import torch  # noqa: E402

import detectron2.utils.comm as comm  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.engine import default_argument_parser, launch  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402

import roi_plugin.data  # noqa: E402,F401  registers shapes_train / shapes_val
from roi_plugin.data.coco import SPEC_FORMAT  # noqa: E402
from roi_plugin.engine.train import Trainer, UserError, build_cfg, results_summary, setup  # noqa: E402,F401

logger = logging.getLogger("detectron2")


def main(args):
    if comm.get_world_size() > 1:
        # Processes share the machine's cores; oversubscribing threads slows every rank down.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    cfg = setup(args)
    start = time.perf_counter()
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        # DefaultTrainer.train returns the results only when TEST.EXPECTED_RESULTS is set.
        results = getattr(trainer, "_last_eval_results", None)
    if comm.is_main_process() and results:
        verify_results(cfg, results)
        wall = time.perf_counter() - start
        record = {"config": args.config_file, "eval_only": args.eval_only, "weights": cfg.MODEL.WEIGHTS,
                  "wall_time_s": wall, "results": results}
        name = "eval_only_metrics.json" if args.eval_only else "final_metrics.json"
        with open(os.path.join(cfg.OUTPUT_DIR, name), "w") as f:
            json.dump(record, f, indent=1)
        text = results_summary(cfg, results, wall)
        if not args.eval_only and not args.no_pictures:
            try:
                from visualize import write_pictures  # tools/visualize.py, next to this script
            except ImportError as e:  # Detectron2's Visualizer needs OpenCV
                text += f"\npictures:   not drawn ({e}; pip install opencv-python-headless)"
            else:
                pictures = write_pictures(cfg, getattr(trainer.model, "module", trainer.model))
                text += "\npictures:   " + "\n            ".join(pictures)
        logger.info("Done." + text)
    return results


def get_parser():
    parser = default_argument_parser()
    parser.add_argument("--no-pictures", action="store_true", help="skip the PNGs after training")
    parser.add_argument("--dataset", action="append", default=[], metavar=SPEC_FORMAT,
                        help="register a COCO-format dataset (boxes, and masks when the JSON has "
                        "segmentations) under NAME, checked before training; repeatable")
    return parser


def cli(argv=None):
    args = get_parser().parse_args(argv)
    # Check the config (and the --dataset files) in the launching process: errors then surface
    # as one line, not as one traceback per spawned worker.
    try:
        build_cfg(args)
    except UserError as e:
        print(f"train_net.py: error: {e}", file=sys.stderr)
        return 2
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
