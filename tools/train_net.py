#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Train and evaluate a Mask R-CNN with roi_plugin's ROI heads (Detectron2's train_net, thin).

    python tools/train_net.py --config-file configs/shapes/mask_rcnn_plugin.yaml
    python tools/train_net.py --config-file ... --num-gpus 2          # 2 processes (gloo on CPU)
    python tools/train_net.py --config-file ... --resume               # continue an interrupted run
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS out/model_final.pth

Importing ``roi_plugin`` registers the heads; importing ``roi_plugin.data`` registers the
built-in ``shapes_train`` / ``shapes_val`` datasets (generated on first use).
"""
import json
import logging
import os
import sys
import tempfile
import time
import weakref

import warnings

# Detectron2 0.7 still calls torch.jit.script at import; on recent torch that prints two
# FutureWarnings before anything else, which would bury one-line error messages.
warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import (
    DefaultTrainer,
    SimpleTrainer,
    AMPTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    launch,
)
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import COCOEvaluator, verify_results
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY, ROI_MASK_HEAD_REGISTRY
from detectron2.utils.logger import setup_logger

import roi_plugin
import roi_plugin.data  # noqa: F401  registers shapes_train / shapes_val

logger = logging.getLogger("detectron2")


class UserError(Exception):
    """A problem with the command line or config, reported as one line without a traceback."""


class Trainer(DefaultTrainer):
    """DefaultTrainer with COCO evaluation (bbox + segm) and DDP that also works on CPU."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__ verbatim except the DDP wrap: it passes device_ids=[local_rank],
        # which DistributedDataParallel rejects for a CPU model; device_ids must be None there.
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = next(model.parameters()).device.type == "cpu"
        model = create_ddp_model(
            model, broadcast_buffers=False, **({"device_ids": None} if on_cpu else {})
        )
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, output_dir=output_folder)


def _registered(registry):
    return sorted(name for name, _ in registry)


def _check_cfg(cfg):
    """Reject what would otherwise fail deep inside model or data construction."""
    for key, registry, name in (
        ("MODEL.ROI_HEADS.NAME", ROI_HEADS_REGISTRY, cfg.MODEL.ROI_HEADS.NAME),
        ("MODEL.ROI_BOX_HEAD.NAME", ROI_BOX_HEAD_REGISTRY, cfg.MODEL.ROI_BOX_HEAD.NAME),
        ("MODEL.ROI_MASK_HEAD.NAME", ROI_MASK_HEAD_REGISTRY, cfg.MODEL.ROI_MASK_HEAD.NAME),
    ):
        if name not in registry:
            raise UserError(f"{key} {name!r} is not registered; registered: {', '.join(_registered(registry))}")
    known = set(DatasetCatalog.list())
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        if name not in known:
            ours = sorted(n for n in known if n.startswith("shapes_"))
            raise UserError(
                f"dataset {name!r} is not registered; the built-in ones are {', '.join(ours)} "
                f"(plus {len(known) - len(ours)} Detectron2 datasets such as coco_2017_val, which need "
                f"their files under $DETECTRON2_DATASETS)"
            )
    out = cfg.OUTPUT_DIR
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UserError(f"OUTPUT_DIR {out!r} is not writable ({e.strerror or e})") from None


def build_cfg(args):
    """get_cfg + add_roi_plugin_config + merge file + merge opts + freeze, with readable errors."""
    if not args.config_file:
        raise UserError("no --config-file given (e.g. configs/shapes/mask_rcnn_plugin.yaml)")
    if not os.path.isfile(args.config_file):
        raise UserError(f"config file not found: {args.config_file}")
    cfg = get_cfg()
    roi_plugin.add_roi_plugin_config(cfg)
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except Exception as e:  # yaml, key and type errors all mean "bad config": report in one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"invalid config ({args.config_file} + command-line overrides): {msg}") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"  # Detectron2 defaults to cuda; this machine has none
    if args.eval_only:
        w = cfg.MODEL.WEIGHTS
        if not w:
            raise UserError("--eval-only needs weights: add MODEL.WEIGHTS path/to/model_final.pth")
        if "://" not in w and not os.path.isfile(w):
            raise UserError(f"MODEL.WEIGHTS file not found: {w}")
    cfg.freeze()
    _check_cfg(cfg)
    return cfg


def setup(args):
    cfg = build_cfg(args)
    default_setup(cfg, args)
    # roi_plugin's own messages (e.g. "Generating the shapes 'train' split") in the same log.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="roi_plugin", abbrev_name="roi")
    return cfg


def _summary(cfg, results, wall_s):
    """The AP table (bbox and segm, overall and per class) and where everything was written."""
    out = cfg.OUTPUT_DIR
    lines = []
    for dataset, res in (results.items() if "bbox" not in results else [(cfg.DATASETS.TEST[0], results)]):
        tasks = [t for t in ("bbox", "segm") if t in res]
        keys = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
        rows = [[t] + [f"{res[t][k]:.1f}" for k in keys] for t in tasks]
        lines.append(f"\nCOCO AP on {dataset} ({cfg.MODEL.ROI_HEADS.NAME}, {cfg.MODEL.ROI_BOX_HEAD.NAME}):")
        lines.append(tabulate(rows, headers=["task"] + keys, tablefmt="github"))
        classes = [k[3:] for k in res[tasks[0]] if k.startswith("AP-")]
        rows = [[c] + [f"{res[t]['AP-' + c]:.1f}" for t in tasks] for c in classes]
        lines.append("")
        lines.append(tabulate(rows, headers=["class"] + [f"{t} AP" for t in tasks], tablefmt="github"))
    final = os.path.join(out, "model_final.pth")
    lines.append("")
    if os.path.isfile(final):
        lines.append(f"checkpoint: {final}")
    lines.append(f"metrics:    {os.path.join(out, 'metrics.json')} (training), "
                 f"{os.path.join(out, 'final_metrics.json')} (AP)")
    lines.append(f"wall time:  {wall_s / 60:.1f} min (model building, training and evaluation)")
    return "\n".join(lines)


def main(args):
    if comm.get_world_size() > 1:
        # Processes share the machine's cores; oversubscribing threads slows every rank down.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    cfg = setup(args)
    start = time.perf_counter()
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
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
        text = _summary(cfg, results, wall)
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
    return parser


def cli(argv=None):
    args = get_parser().parse_args(argv)
    # Check the config in the launching process: errors then surface as one line, not as one
    # traceback per spawned worker.
    try:
        build_cfg(args)
    except UserError as e:
        print(f"train_net.py: error: {e}", file=sys.stderr)
        return 2
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli())
