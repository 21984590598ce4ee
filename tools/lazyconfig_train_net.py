#!/usr/bin/env python
"""Train or evaluate a LazyConfig (.py) config, e.g. configs/lazy/shapes_mask_rcnn_plugin.py.

    python tools/lazyconfig_train_net.py --config-file configs/lazy/shapes_mask_rcnn_plugin.py \
        [--eval-only] [--resume] [--num-gpus N] [train.max_iter=100 ...]

Thin over roi_plugin.engine.lazy_train (Detectron2's lazyconfig_train_net loop).
"""
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.engine.defaults import create_ddp_model

import roi_plugin  # noqa: F401  (registers the heads)
from roi_plugin.engine.lazy_train import do_test, do_train


def main(args):
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    default_setup(cfg, args)
    if args.eval_only:
        model = instantiate(cfg.model).to(cfg.train.device)
        model = create_ddp_model(model)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    return do_train(cfg, resume=args.resume)[1]


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
