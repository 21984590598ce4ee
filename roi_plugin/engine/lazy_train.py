# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Train and evaluate a LazyConfig (``.py``) config: Detectron2's ``tools/lazyconfig_train_net.py``
loop as library functions, used by ``tools/lazyconfig_train_net.py`` and the tests.

The config provides ``model``, ``dataloader.{train,test,evaluator}``, ``optimizer``,
``lr_multiplier`` and ``train`` (Detectron2's ``common/train.py`` keys: output_dir,
init_checkpoint, max_iter, amp, ddp, checkpointer, eval_period, log_period, device).
"""
import logging

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

__all__ = ["do_test", "do_train"]

logger = logging.getLogger("detectron2")


def do_test(cfg, model):
    """COCO-style evaluation of ``model`` on ``cfg.dataloader.test``; the results dict."""
    if "evaluator" not in cfg.dataloader:
        return {}
    ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(ret)
    return ret


def do_train(cfg, resume: bool = False):
    """Train ``cfg.model`` for ``cfg.train.max_iter`` iterations, evaluate every
    ``train.eval_period`` and at the end; returns ``(model, final evaluation results)``."""
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    results = {}

    def evaluate():
        results.clear()
        results.update(do_test(cfg, model))
        return results

    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, evaluate),  # also runs after the last iteration
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return model, results
