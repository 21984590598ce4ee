# The shapes demo (configs/shapes/mask_rcnn_plugin.yaml) as a LazyConfig: R18-FPN with
# GroupNorm, 128 FPN channels, PluginROIHeads with roi_plugin's poolers, TwoMLPHead and
# FastRCNNPredictor, trained from scratch on the built-in shapes dataset.
# Run: python tools/lazyconfig_train_net.py --config-file configs/lazy/shapes_mask_rcnn_plugin.py
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
import detectron2.data.transforms as T
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

import roi_plugin.data  # noqa: F401  (registers shapes_train / shapes_val)
from roi_plugin import FastRCNNPredictor, PluginROIHeads, ROIAlignPooler, TwoMLPHead

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
optimizer = model_zoo.get_config("common/optim.py").SGD
train = model_zoo.get_config("common/train.py").train

_scales = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)
_channels = 128
model.pixel_mean = [127.5, 127.5, 127.5]
model.pixel_std = [64.0, 64.0, 64.0]
model.backbone.bottom_up.stem.norm = "GN"
model.backbone.bottom_up.stages.norm = "GN"
model.backbone.bottom_up.stages.depth = 18
del model.backbone.bottom_up.stages.stride_in_1x1  # BasicBlock (R18) has no such argument
model.backbone.bottom_up.freeze_at = 0
model.backbone.norm = "GN"
model.backbone.out_channels = _channels
model.proposal_generator.head.in_channels = _channels
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (500, 250)
model.roi_heads._target_ = PluginROIHeads
model.roi_heads.num_classes = 4
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_pooler = L(ROIAlignPooler)(
    output_size=7, scales=_scales, sampling_ratio=0, pooler_type="ROIAlignV2", sampler="gather"
)
model.roi_heads.box_head = L(TwoMLPHead)(input_shape=ShapeSpec(channels=_channels, height=7, width=7), fc_dim=512)
model.roi_heads.box_predictor._target_ = FastRCNNPredictor
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=512)
model.roi_heads.mask_pooler = L(ROIAlignPooler)(
    output_size=14, scales=_scales, sampling_ratio=0, pooler_type="ROIAlignV2", sampler="gather"
)
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=_channels, width=14, height=14)
model.roi_heads.mask_head.conv_dims = [128, 128]

dataloader = dict(
    train=L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="shapes_train"),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=256, max_size=256)],
            image_format="BGR",
            use_instance_mask=True,
            instance_mask_format="polygon",
        ),
        total_batch_size=4,
        num_workers=1,
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="shapes_val", filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=256, max_size=256)],
            image_format="${...train.mapper.image_format}",
        ),
        num_workers=1,
    ),
    evaluator=L(COCOEvaluator)(dataset_name="${..test.dataset.names}"),
)

train.max_iter = 800
train.output_dir = "./output/lazy_shapes_mask_rcnn_plugin"
train.device = "cpu"
train.eval_period = 0
train.checkpointer.period = 200
train.seed = 42
optimizer.lr = 0.02
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=100 / 800,
    warmup_factor=0.001,
)
