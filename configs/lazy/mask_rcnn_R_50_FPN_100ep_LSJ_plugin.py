# Detectron2's new_baselines Mask R-CNN R50-FPN (100 epochs, LSJ) with roi_plugin's poolers,
# ROI heads and predictor. The box head stays the baseline's own (4 convs + 1 FC with
# SyncBN): TwoMLPHead replaces only a 2-FC box head.
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from roi_plugin import FastRCNNPredictor, PluginROIHeads, ROIAlignPooler

_base = model_zoo.get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
dataloader, lr_multiplier, model, optimizer, train = (
    _base.dataloader, _base.lr_multiplier, _base.model, _base.optimizer, _base.train
)

_scales = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)
model.roi_heads._target_ = PluginROIHeads
model.roi_heads.box_pooler = L(ROIAlignPooler)(
    output_size=7, scales=_scales, sampling_ratio=0, pooler_type="ROIAlignV2", sampler="gather"
)
model.roi_heads.mask_pooler = L(ROIAlignPooler)(
    output_size=14, scales=_scales, sampling_ratio=0, pooler_type="ROIAlignV2", sampler="gather"
)
model.roi_heads.box_predictor._target_ = FastRCNNPredictor
