"""What more than one test file uses: the checkout's paths, tiny configs, seeded inputs and the
references we did not write, each wrapped once.

* paths and tools: ``REPO``, ``load_tool`` (a ``tools/`` script as a module, as
  ``python tools/NAME.py`` runs it), ``detectron2_compiled`` (whether Detectron2's ``_C`` loads);
* configs: ``shipped_cfg`` (a file under ``configs/`` on the CPU, no weights), ``tiny_cfg`` (the
  plugin Mask R-CNN shrunk for CPU tests; ``TINY_OVERRIDES`` are its keys as a tool's command
  line), ``SHAPES_CONFIG`` / ``SHAPES_TINY`` (the shapes job at 128 pixels);
* seeded inputs: ``pyramid`` / ``padded_pyramid`` (FPN maps P2-P5), ``box_zoo`` (boxes of every
  kind for one image), ``random_boxes``, ``annotated_image`` (an image with box-shaped masks);
  ``ListCall`` (a pooler with one tensor argument per map and per image, for tracing/compiling);
* references: ``torchvision_reference`` (``torchvision.ops.roi_align`` on the level Detectron2's
  rule picks) and ``roipooler_reference`` (Detectron2's ``ROIPooler``), on the pyramid's
  ``SCALES``; ``TOL``, the float32 tolerance against them.

The float64 transcription of Detectron2's ROIAlignRotated kernel is a reference implementation,
not a helper: it is its own module (``rotated_reference.py``), tested on its own
(``test_rotated_reference.py``) and also used by tools/rotated_pooler_accuracy.py.
"""
import importlib.util
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import roi_align

from detectron2.config import get_cfg
from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.structures import BitMasks, Boxes, ImageList, Instances

from roi_plugin import add_roi_plugin_config

REPO = Path(__file__).resolve().parents[1]
SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)  # P2-P5
TOL = 1e-4  # float32 pooler against torchvision / ROIPooler


# ----------------------------------------------------------------------------- paths and tools
def load_tool(name):
    """``tools/NAME.py`` as a module (tools/ is not a package), as ``python tools/NAME.py``
    would run it, without its ``__main__`` block."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def detectron2_compiled() -> bool:
    """Whether Detectron2's compiled ``_C`` loads (a build from source; the pure-Python wheel has
    none). It then defines ``ROIAlignRotated``'s kernel and the rotated IoU/NMS operators itself."""
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------- configs
def shipped_cfg(config, *overrides):
    """``configs/<config>`` (a path under ``configs/``, or an absolute one) with roi_plugin's keys,
    on the CPU, without weights; ``overrides`` are further ``KEY, VALUE`` pairs."""
    cfg = get_cfg()
    add_roi_plugin_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / config))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *overrides])
    return cfg


# configs/mask_rcnn_R_50_FPN_1x_plugin.yaml shrunk for CPU tests: R18-FPN, 16 FPN channels, tiny
# heads, 3 classes, few proposals. Also a tool's command line that rebuilds a tiny_cfg() model.
TINY_OVERRIDES = [
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "8", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
]


def tiny_cfg(sampler="gather", *overrides):
    """``configs/mask_rcnn_R_50_FPN_1x_plugin.yaml`` shrunk for CPU tests (``TINY_OVERRIDES``)
    with ``sampler``; ``overrides`` are further ``KEY, VALUE`` pairs as on a command line."""
    return shipped_cfg("mask_rcnn_R_50_FPN_1x_plugin.yaml", *TINY_OVERRIDES,
                       "MODEL.ROI_PLUGIN.SAMPLER", sampler, *overrides)


# The shapes job (``./run.sh train``) at 128 pixels, 2 images a batch, few proposals, no workers.
SHAPES_CONFIG = REPO / "configs" / "shapes" / "mask_rcnn_plugin.yaml"
SHAPES_TINY = [
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "DATALOADER.NUM_WORKERS", "0",
]


# ------------------------------------------------------------------------------ seeded inputs
def pyramid(batch=2, height=128, width=96, channels=8, seed=0, dtype=torch.float32):
    """FPN-like maps P2-P5 (strides 4-32) of a ``batch`` of ``height x width`` images, standard
    normal. float16/bfloat16 maps are float32 draws rounded to the dtype."""
    g = torch.Generator().manual_seed(seed)
    draw = torch.float64 if dtype == torch.float64 else torch.float32
    return [
        torch.randn(batch, channels, height // s, width // s, generator=g, dtype=draw).to(dtype)
        for s in (4, 8, 16, 32)
    ]


def padded_pyramid(image_sizes, channels=8, seed=0, dtype=torch.float32):
    """``pyramid`` for a batch of images of different sizes, padded to a multiple of 32 as
    Detectron2's ImageList pads them: the maps are larger than some images, so coordinates must
    come from the stride."""
    images = [torch.zeros(3, h, w) for h, w in image_sizes]
    height, width = ImageList.from_tensors(images, size_divisibility=32).tensor.shape[-2:]
    return pyramid(len(image_sizes), height, width, channels, seed, dtype)


def box_zoo(h, w, n_random=40, seed=0):
    """Boxes inside an ``h x w`` image, on and across its border, tiny (< 1 px), larger than the
    image, on every level, plus ``n_random`` log-uniform random ones."""
    g = torch.Generator().manual_seed(seed)
    fixed = torch.tensor(
        [
            [10.0, 12.0, 50.0, 60.0],  # inside, P2
            [0.0, 0.0, w, h],  # the whole image
            [-30.0, -20.0, 40.0, 35.0],  # crossing the top-left corner
            [w - 40.0, h - 30.0, w + 25.0, h + 10.0],  # crossing the bottom-right corner
            [0.0, 5.0, 30.0, 40.0],  # touching the left border
            [w - 17.0, 3.0, w, 20.0],  # touching the right border
            [20.3, 30.7, 20.9, 31.2],  # tiny, < 1 px
            [33.0, 33.0, 33.0, 33.0],  # zero area
            [-2 * w, -2 * h, 3 * w, 3 * h],  # far larger than the image
            [5.0, 7.0, 5.0 + 230.0, 7.0 + 220.0],  # P4-sized
            [1.0, 2.0, 1.0 + 460.0, 2.0 + 470.0],  # P5-sized
            [4.0, 4.0, 4.0 + 120.0, 4.0 + 110.0],  # P3-sized
        ]
    )
    size = torch.exp(torch.empty(n_random, 2).uniform_(math.log(2), math.log(600), generator=g))
    ctr = torch.rand(n_random, 2, generator=g) * torch.tensor([w, h]) * 1.2 - 0.1 * torch.tensor([w, h])
    rnd = torch.cat([ctr - size / 2, ctr + size / 2], 1)
    return torch.cat([fixed, rnd])


def random_boxes(n, height, width, seed, max_side=160.0):
    """``n`` boxes of all sizes up to ``max_side`` (so that all four levels are used), some
    crossing the border of a ``height x width`` image."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width, height]) * 1.2 - 10
    wh = 1 + torch.rand(n, 2, generator=g) ** 2 * max_side
    return torch.cat([xy, xy + wh], 1)


def annotated_image(h, w, n_objects, seed):
    """A Detectron2 training input: a random ``h x w`` uint8 image with ``n_objects`` (possibly 0)
    ground-truth boxes of a third of the image, their box-shaped masks and classes 0-2."""
    g = torch.Generator().manual_seed(seed)
    inst = Instances((h, w))
    masks = torch.zeros(n_objects, h, w, dtype=torch.bool)
    boxes = []
    for i in range(n_objects):
        x0 = int(torch.randint(0, w // 2, (1,), generator=g))
        y0 = int(torch.randint(0, h // 2, (1,), generator=g))
        x1, y1 = x0 + w // 3, y0 + h // 3
        masks[i, y0:y1, x0:x1] = True
        boxes.append([x0, y0, x1, y1])
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.randint(0, 3, (n_objects,), generator=g)
    inst.gt_masks = BitMasks(masks)
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    return {"image": image, "instances": inst, "height": h, "width": w}


class ListCall(nn.Module):
    """A 4-level pooler on 2 images with one tensor argument per map and per box list, as
    ``torch.jit.trace`` and ``torch.compile`` take them."""

    def __init__(self, pooler):
        super().__init__()
        self.pooler = pooler

    def forward(self, f0, f1, f2, f3, b0, b1):
        return self.pooler([f0, f1, f2, f3], [b0, b1])


# -------------------------------------------------------------------------------- references
def torchvision_reference(feats, box_lists, output_size, sampling_ratio, aligned, dtype=torch.float64):
    """``torchvision.ops.roi_align`` in ``dtype`` on the level (of ``SCALES``) that Detectron2's
    ``assign_boxes_to_levels`` (P2-P5, canonical 224 px on P4) gives each ROI."""
    levels = assign_boxes_to_levels([Boxes(b) for b in box_lists], 2, 5, 224, 4)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), i), b], 1) for i, b in enumerate(box_lists)])
    out = torch.zeros(len(rois), feats[0].shape[1], *_pair(output_size), dtype=dtype)
    for lvl, (f, scale) in enumerate(zip(feats, SCALES)):
        sel = (levels == lvl).nonzero().flatten()
        if len(sel):
            out[sel] = roi_align(f.to(dtype), rois[sel].to(dtype), output_size, scale, sampling_ratio,
                                 aligned)
    return out


def roipooler_reference(feats, box_lists, pooler_type, sampling_ratio=0, output_size=7):
    """Detectron2's ``ROIPooler`` on ``SCALES`` (torchvision's kernel per level), the boxes in
    the maps' dtype as its ``Boxes`` require."""
    pooler = ROIPooler(output_size, SCALES, sampling_ratio, pooler_type)
    return pooler(feats, [Boxes(b.to(feats[0].dtype)) for b in box_lists])
