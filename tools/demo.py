#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Run a trained model on your pictures (Detectron2's demo/demo.py for images, thin).

    python tools/demo.py --config-file configs/shapes/mask_rcnn_plugin.yaml \\
        --input photos/ --output output/demo \\
        MODEL.WEIGHTS output/shapes_mask_rcnn_plugin/model_final.pth

--input takes image files, folders and globs ("photos/*.jpg"). --output gets one picture per
image (Detectron2's Visualizer: boxes, classes, scores, masks) and detections.json (per image:
boxes, classes, scores, COCO RLE masks; boxes are x1, y1, x2, y2, or for a rotated model such as
configs/rotated/rrcnn_R_18_FPN_plugin.yaml x_ctr, y_ctr, w, h, angle, as its "box_mode" says). Unreadable images are skipped with a warning and
counted at the end; the exit status is 1 when none could be read, 2 on a bad command line.
A model trained with --dataset gets its class names from the same --dataset argument.
"""
import argparse
import os
import sys
import warnings

warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)

from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import roi_plugin.data  # noqa: E402,F401  registers shapes_train / shapes_val (class names)
from roi_plugin.data.coco import SPEC_FORMAT  # noqa: E402
from roi_plugin.engine.demo import collect_images, run_demo  # noqa: E402
from roi_plugin.engine.train import UserError, check_cfg, check_weights, load_cfg, register_datasets  # noqa: E402


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the config the model was trained with")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or globs")
    parser.add_argument("--output", required=True, help="folder for the pictures and detections.json")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score shown and recorded")
    parser.add_argument("--dataset", action="append", default=[], metavar=SPEC_FORMAT,
                        help="register a COCO-format dataset (as train_net.py) for its class names")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS model_final.pth")
    return parser


def build_demo_cfg(args):
    register_datasets(args.dataset)
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise UserError(f"--confidence-threshold {args.confidence_threshold} is not in [0, 1]")
    cfg = load_cfg(args.config_file, args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = args.confidence_threshold
    check_weights(cfg, "no weights")
    cfg.freeze()
    # Class names come from DATASETS.TEST[0]; a model trained on another dataset still runs.
    check_cfg(cfg, datasets=[d for d in cfg.DATASETS.TEST[:1] if d in DatasetCatalog.list()])
    return cfg


def main(argv=None):
    args = get_parser().parse_args(argv)
    logger = setup_logger(name="roi_plugin", abbrev_name="roi")
    try:
        cfg = build_demo_cfg(args)
        os.makedirs(args.output, exist_ok=True)
    except UserError as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"demo.py: error: cannot create --output {args.output} ({e.strerror or e})", file=sys.stderr)
        return 2
    paths = collect_images(args.input)
    if not paths:
        print(f"demo.py: error: no image files in --input {' '.join(args.input)}", file=sys.stderr)
        return 2
    if cfg.DATASETS.TEST and cfg.DATASETS.TEST[0] not in DatasetCatalog.list():
        logger.warning(f"dataset {cfg.DATASETS.TEST[0]!r} is not registered: classes are shown as numbers "
                       f"(pass the training --dataset {SPEC_FORMAT} for their names)")
    record = run_demo(cfg, paths, args.output, progress=True)
    n_ok, n_bad = len(record["images"]), len(record["skipped"])
    n_det = sum(len(im["scores"]) for im in record["images"])
    logger.info(f"{n_ok} image(s), {n_det} detection(s) at score >= {args.confidence_threshold}: pictures and "
                f"detections.json in {args.output}" + (f"; {n_bad} unreadable image(s) skipped" if n_bad else ""))
    if n_ok == 0:
        print(f"demo.py: error: none of the {n_bad} input(s) could be read as an image", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
