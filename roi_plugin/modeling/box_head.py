# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
from typing import List

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY

__all__ = ["TwoMLPHead"]


@ROI_BOX_HEAD_REGISTRY.register()
class TwoMLPHead(nn.Module):
    """The Faster R-CNN box head: flatten -> fc1 -> ReLU -> fc2 -> ReLU.

    Parameter names (``fc1``, ``fc2``) and flattening order (C, H, W) are those of
    Detectron2's ``FastRCNNConvFCHead`` with ``NUM_FC: 2``, so checkpoints move between
    the two unchanged.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, fc_dim: int = 1024):
        """
        Args:
            input_shape: shape of the pooled ROI features (C, H, W), e.g. 256 x 7 x 7.
            fc_dim: width of both fully-connected layers.
        """
        super().__init__()
        in_dim = input_shape.channels * (input_shape.height or 1) * (input_shape.width or 1)
        self.fc1 = nn.Linear(in_dim, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        for layer in (self.fc1, self.fc2):
            weight_init.c2_xavier_fill(layer)  # Detectron2's init for these layers
        self._output_size = fc_dim

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_BOX_HEAD
        if head.NUM_CONV != 0 or head.NUM_FC != 2:
            raise ValueError(
                "TwoMLPHead has exactly two FC layers and no convs; set MODEL.ROI_BOX_HEAD.NUM_FC: 2 "
                f"and NUM_CONV: 0 (got NUM_FC={head.NUM_FC}, NUM_CONV={head.NUM_CONV}) or use "
                "FastRCNNConvFCHead"
            )
        return {"input_shape": input_shape, "fc_dim": head.FC_DIM}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (R, C, H, W) pooled ROI features.
        Returns:
            (R, fc_dim) box features.
        """
        x = torch.flatten(x, start_dim=1)
        return torch.relu(self.fc2(torch.relu(self.fc1(x))))

    @property
    @torch.jit.unused  # a ShapeSpec is not scriptable; as in Detectron2's FastRCNNConvFCHead
    def output_shape(self) -> ShapeSpec:
        return ShapeSpec(channels=self._output_size)
