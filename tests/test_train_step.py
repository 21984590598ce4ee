"""End to end: a few CPU training iterations of the plugin model through Detectron2's DefaultTrainer."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultTrainer

from roi_plugin import ROIAlignPooler

from helpers import shipped_cfg

pytestmark = pytest.mark.slow  # 4 iterations of DefaultTrainer per case


def random_dataset(root, n=4, seed=0):
    """Random-noise images with random rectangles as boxes and polygon masks, one empty image."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        h, w = int(rng.integers(96, 160)), int(rng.integers(96, 160))
        path = os.path.join(root, f"img{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        anns = []
        for _ in range(0 if i == n - 1 else int(rng.integers(1, 4))):
            x0, y0 = rng.uniform(0, w - 30), rng.uniform(0, h - 30)
            x1, y1 = rng.uniform(x0 + 10, w), rng.uniform(y0 + 10, h)
            anns.append({
                "bbox": [x0, y0, x1, y1], "bbox_mode": 0, "category_id": int(rng.integers(0, 3)),
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "iscrowd": 0,
            })
        records.append({"file_name": path, "image_id": i, "height": h, "width": w, "annotations": anns})
    return records


@pytest.mark.parametrize("heads,sampler", [("PluginROIHeads", "gather"), ("GridSampleROIHeads", "grid_sample")])
def test_default_trainer_iterations(tmp_path, heads, sampler):
    name = f"roi_plugin_test_random_{heads}"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    records = random_dataset(str(tmp_path))
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"])

    cfg = shipped_cfg(
        "mask_rcnn_R_50_FPN_1x_gridsample.yaml",
        "MODEL.ROI_HEADS.NAME", heads,
        "MODEL.ROI_PLUGIN.SAMPLER", sampler, "MODEL.RESNETS.DEPTH", 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN",
        "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 200,
        "MODEL.PIXEL_STD", [57.375, 57.120, 58.395],
        "INPUT.MIN_SIZE_TRAIN", (128,), "INPUT.MAX_SIZE_TRAIN", 160, "INPUT.MASK_FORMAT", "polygon",
        "DATASETS.TRAIN", (name,), "DATASETS.TEST", (), "DATALOADER.NUM_WORKERS", 0,
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.BASE_LR", 0.01, "SOLVER.MAX_ITER", 4, "SOLVER.WARMUP_ITERS", 1,
        "SOLVER.STEPS", (), "SOLVER.CHECKPOINT_PERIOD", 100, "OUTPUT_DIR", str(tmp_path / "out"),
        "SEED", 1,
    )
    torch.manual_seed(0)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    roi_heads = trainer.model.roi_heads
    assert type(roi_heads).__name__ == heads
    assert isinstance(roi_heads.box_pooler, ROIAlignPooler) and roi_heads.box_pooler.sampler == sampler
    assert isinstance(roi_heads.mask_pooler, ROIAlignPooler) and roi_heads.mask_pooler.output_size == (14, 14)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    hist = trainer.storage.histories()
    for key in ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls"):
        values = [v for v, _ in hist[key].values()]
        assert len(values) == 4 and all(np.isfinite(values)), (key, values)
    after = trainer.model.state_dict()
    for k in ("roi_heads.box_head.fc1.weight", "roi_heads.box_predictor.cls_score.weight",
              "roi_heads.mask_head.mask_fcn1.weight", "backbone.fpn_output2.weight"):
        assert not torch.equal(before[k], after[k]), f"{k} was not trained"
    assert os.path.isfile(tmp_path / "out" / "model_final.pth")
    DatasetCatalog.remove(name)
