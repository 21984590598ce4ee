# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""What tools/train_net.py and tools/demo.py share: the config built and checked with one-line
errors (:class:`UserError`), ``--dataset`` registration, and a ``DefaultTrainer`` with COCO
evaluation whose DDP wrap also works on CPU. A rotated model (RRPN or rotated ROI heads,
:func:`is_rotated_model`) trains on :class:`~roi_plugin.data.RotatedDatasetMapper`'s rotated
boxes and is evaluated by Detectron2's ``RotatedCOCOEvaluator`` (box AP with rotated IoU).

Every check here runs before any model is built, so a bad command line costs seconds and
prints one line, never a traceback after minutes of training.
"""
import os
import tempfile
import weakref

import torch
from tabulate import tabulate

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, create_ddp_model, default_setup
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import COCOEvaluator, RotatedCOCOEvaluator
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY, ROI_MASK_HEAD_REGISTRY
from detectron2.modeling.roi_heads.rotated_fast_rcnn import RROIHeads
from detectron2.utils.logger import setup_logger

from ..config import add_roi_plugin_config
from ..data.coco import SPEC_FORMAT, CocoDatasetError, register_coco_dataset, registered_coco_summary
from ..data.rotated_mapper import RotatedDatasetMapper

__all__ = ["UserError", "Trainer", "load_cfg", "register_datasets", "check_cfg", "build_cfg", "setup",
           "results_summary", "is_rotated_model"]


class UserError(Exception):
    """A problem with the command line, config or data, reported as one line without a traceback."""


def is_rotated_model(cfg) -> bool:
    """Whether the model of ``cfg`` takes rotated ground truth (``RotatedBoxes``): RRPN proposals
    or rotated ROI heads (``RROIHeads`` and its subclasses, such as ``PluginRROIHeads``)."""
    if cfg.MODEL.PROPOSAL_GENERATOR.NAME == "RRPN":
        return True
    name = cfg.MODEL.ROI_HEADS.NAME
    heads = ROI_HEADS_REGISTRY.get(name) if name in ROI_HEADS_REGISTRY else None
    return isinstance(heads, type) and issubclass(heads, RROIHeads)


class Trainer(DefaultTrainer):
    """DefaultTrainer with COCO evaluation (bbox + segm; rotated box AP for rotated models), rotated
    data mapping for rotated models, and DDP that also works on CPU."""

    def __init__(self, cfg):
        # Detectron2 (0.7.2 and its main branch) has no hook for the DDP wrap: __init__ calls
        # create_ddp_model(model, broadcast_buffers=False), which adds device_ids=[local_rank],
        # and DistributedDataParallel rejects device_ids for a CPU model. So this is
        # DefaultTrainer.__init__ with that one call changed (device_ids=None on CPU); the rest
        # are the same calls to the same overridable build_* methods.
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = next(model.parameters()).device.type == "cpu"
        model = create_ddp_model(model, broadcast_buffers=False, **({"device_ids": None} if on_cpu else {}))
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
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
        if is_rotated_model(cfg):
            return RotatedCOCOEvaluator(dataset_name, output_dir=output_folder)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        if is_rotated_model(cfg):
            return build_detection_train_loader(cfg, mapper=RotatedDatasetMapper(cfg, is_train=True))
        return super().build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if is_rotated_model(cfg):
            mapper = RotatedDatasetMapper(cfg, is_train=False)
            return build_detection_test_loader(cfg, dataset_name, mapper=mapper)
        return super().build_test_loader(cfg, dataset_name)


def register_datasets(specs):
    """Check and register each ``NAME:ANNOTATIONS_JSON:IMAGE_DIR`` (``--dataset``)."""
    for spec in specs or ():
        try:
            register_coco_dataset(spec)
        except CocoDatasetError as e:
            name = spec.split(":", 1)[0]
            raise UserError(f"dataset {name!r}: {e}" if ":" in spec else str(e)) from None


def _registered(registry):
    return sorted(name for name, _ in registry)


def check_cfg(cfg, datasets=None):
    """Reject what would otherwise fail deep inside model or data construction.

    Args:
        datasets: the dataset names to check; default DATASETS.TRAIN + DATASETS.TEST.
    """
    for key, registry, name in (
        ("MODEL.ROI_HEADS.NAME", ROI_HEADS_REGISTRY, cfg.MODEL.ROI_HEADS.NAME),
        ("MODEL.ROI_BOX_HEAD.NAME", ROI_BOX_HEAD_REGISTRY, cfg.MODEL.ROI_BOX_HEAD.NAME),
        ("MODEL.ROI_MASK_HEAD.NAME", ROI_MASK_HEAD_REGISTRY, cfg.MODEL.ROI_MASK_HEAD.NAME),
    ):
        if name not in registry:
            raise UserError(f"{key} {name!r} is not registered; registered: {', '.join(_registered(registry))}")
    known = set(DatasetCatalog.list())
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) if datasets is None else list(datasets)
    for name in names:
        if name not in known:
            ours = sorted(n for n in known if n.startswith("shapes_"))
            raise UserError(
                f"dataset {name!r} is not registered; the built-in ones are {', '.join(ours)} "
                f"(plus {len(known) - len(ours)} Detectron2 datasets such as coco_2017_val, which need "
                f"their files under $DETECTRON2_DATASETS); add your own with --dataset {SPEC_FORMAT}"
            )
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            summary = registered_coco_summary(name)
            where = f" in {summary.json_file}" if summary else ""
            raise UserError(
                f"dataset {name!r} has {len(classes)} categories{where} but MODEL.ROI_HEADS.NUM_CLASSES "
                f"is {cfg.MODEL.ROI_HEADS.NUM_CLASSES}; add MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}"
            )
        mode = MetadataCatalog.get(name).get("bbox_mode")
        if mode is not None and (mode == "XYWHA_ABS") != is_rotated_model(cfg):
            summary = registered_coco_summary(name)
            where = f" in {summary.json_file}" if summary else ""
            model = (f"MODEL.PROPOSAL_GENERATOR.NAME {cfg.MODEL.PROPOSAL_GENERATOR.NAME}, "
                     f"MODEL.ROI_HEADS.NAME {cfg.MODEL.ROI_HEADS.NAME}")
            if mode == "XYWHA_ABS":
                raise UserError(
                    f"dataset {name!r} has rotated boxes (bbox [x_ctr, y_ctr, width, height, angle]){where}, "
                    f"but the model is upright ({model}); train it with a rotated config such as "
                    f"configs/rotated/rrcnn_R_18_FPN_plugin.yaml")
            raise UserError(
                f"dataset {name!r} has upright boxes (bbox [x, y, width, height]){where}, but the model is "
                f"rotated ({model}); use an upright config, or give each bbox as "
                f"[x_ctr, y_ctr, width, height, angle]")
        summary = registered_coco_summary(name)
        if summary is not None and cfg.MODEL.MASK_ON:
            if not summary.has_segmentation:
                raise UserError(f"dataset {name!r}: {summary.json_file} has no segmentation, but "
                                f"MODEL.MASK_ON is True; add MODEL.MASK_ON False to train boxes only")
            if summary.has_rle and cfg.INPUT.MASK_FORMAT == "polygon":
                raise UserError(f"dataset {name!r}: {summary.json_file} has RLE segmentations, which "
                                f"INPUT.MASK_FORMAT 'polygon' cannot read; add INPUT.MASK_FORMAT bitmask")
    out = cfg.OUTPUT_DIR
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UserError(f"OUTPUT_DIR {out!r} is not writable ({e.strerror or e})") from None


def load_cfg(config_file, opts):
    """get_cfg + add_roi_plugin_config + merge file + merge opts (not frozen), with readable
    errors; a CUDA device falls back to CPU when there is none."""
    if not config_file:
        raise UserError("no --config-file given (e.g. configs/shapes/mask_rcnn_plugin.yaml)")
    if not os.path.isfile(config_file):
        raise UserError(f"config file not found: {config_file}")
    cfg = get_cfg()
    add_roi_plugin_config(cfg)
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(opts)
    except Exception as e:  # yaml, key and type errors all mean "bad config": report in one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"invalid config ({config_file} + command-line overrides): {msg}") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"  # Detectron2 defaults to cuda; this machine has none
    return cfg


def check_weights(cfg, missing: str) -> None:
    """One line when ``MODEL.WEIGHTS`` is empty (``missing`` says what needs them) or a local
    file that does not exist."""
    w = cfg.MODEL.WEIGHTS
    if not w:
        raise UserError(f"{missing}: add MODEL.WEIGHTS path/to/model_final.pth")
    if "://" not in w and not os.path.isfile(w):
        raise UserError(f"MODEL.WEIGHTS file not found: {w}")


def build_cfg(args):
    """The frozen, checked config of train_net.py's arguments: registers ``--dataset`` first, so
    that the overrides can name those datasets."""
    register_datasets(getattr(args, "dataset", None))
    cfg = load_cfg(args.config_file, args.opts)
    if args.eval_only:
        check_weights(cfg, "--eval-only needs weights")
    cfg.freeze()
    check_cfg(cfg)
    return cfg


def setup(args):
    cfg = build_cfg(args)
    default_setup(cfg, args)
    # roi_plugin's own messages (e.g. "Generating the shapes 'train' split") in the same log.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="roi_plugin", abbrev_name="roi")
    return cfg


def results_summary(cfg, results, wall_s):
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

