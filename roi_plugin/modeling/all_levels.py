# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""All-level pooling (GRoIE): every ROI pooled from every pyramid level, then combined.

FPN pools a box from the one level its size picks (:mod:`..layers.levels`). GRoIE (Rossi et
al., ICPR 2020, "A novel Region of Interest Extraction Layer for Instance Segmentation";
mmdetection's ``GenericRoIExtractor``; PANet's adaptive feature pooling before it) pools it
from all L levels, at each level's own scale, and combines the L results:

* ``all_levels="sum"``:  ``out = sum_l pool_l(box)``, no parameters (done inside the pooler's
  operator call, :func:`roi_plugin.modeling.poolers.pool_levels`);
* ``all_levels="conv"``: the learned variant, :class:`LevelConvFusion`:
  ``out = relu(post(sum_l relu(pre(pool_l(box)))))``, ``pre`` one k x k convolution shared by
  the levels (GRoIE's pre-processing module) and ``post`` one k x k convolution on the sum
  (its post-processing module), both ``channels -> channels``, padding ``k // 2``, MSRA
  initialisation as Detectron2's convolutional heads.

The pooler (:class:`roi_plugin.modeling.poolers.ROIAlignPooler`, ``all_levels=``) owns the
fusion, so its parameters are the pooler's (``box_pooler.fuse.pre.weight``, ...) and travel
with checkpoints; ``MODEL.ROI_PLUGIN.ALL_LEVELS`` / ``ALL_LEVELS_KERNEL`` set it from a config.
"""
import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ALL_LEVELS", "LevelConvFusion"]

ALL_LEVELS = ("", "sum", "conv")  # "": the FPN level rule (one level per ROI)


class LevelConvFusion(nn.Module):
    """GRoIE's learned combination of the levels: a conv + ReLU shared by the levels, the sum
    over levels, a conv + ReLU.

    Args:
        channels: channels of the pooled features (in and out of both convs).
        kernel_size: odd kernel size of both convs (GRoIE's best used 5; 1 and 3 cost less).
    """

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        if channels < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"LevelConvFusion needs channels >= 1 and an odd kernel_size, got {channels}, "
                             f"{kernel_size}")
        self.pre = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.post = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        for conv in (self.pre, self.post):
            weight_init.c2_msra_fill(conv)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(L, K, C, h, w) features of K ROIs pooled from L levels -> (K, C, h, w)."""
        per_level = F.relu(self.pre(pooled.flatten(0, 1)))
        return F.relu(self.post(per_level.view(pooled.shape).sum(0)))
