# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Whole-model TorchScript: the graph of :mod:`.onnx_model` (Detectron2's ``TracingAdapter``
around ``model.inference(do_postprocess=False)`` on one (3, H, W) image) traced by
``torch.jit.trace`` and saved with ``torch.jit.save``.

The traced module takes one image tensor and returns the flattened ``Instances``, the fields in
sorted order then the image size: the ONNX graph's outputs, by the same names
(:func:`.onnx_model._output_names`). It records the plugin's operators as they run eagerly: the
pooler's ``roi_plugin::roi_align_*`` and, for rotated models, Detectron2's
``detectron2::nms_rotated`` (inside ``batched_nms_rotated``, which Detectron2 scripts while
tracing), so it gives the eager detections; loading it needs ``import roi_plugin`` first, which
defines those operators (and, without a compiled Detectron2, the rotated ones).
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from .onnx_model import _output_names, trace_adapter

__all__ = ["export_torchscript", "run_torchscript"]


def export_torchscript(model: nn.Module, image: torch.Tensor, path: str) -> List[str]:
    """Trace ``model`` on ``image`` (3, H, W) and save the TorchScript module to ``path``.
    Returns the output names (the ``Instances`` fields in order, then ``image_size``)."""
    adapter = trace_adapter(model, image)
    with torch.no_grad():
        traced = torch.jit.trace(adapter, (image,), check_trace=False)
    torch.jit.save(traced, path)
    return _output_names(model, image)


def run_torchscript(module, names: Sequence[str], images: Sequence[torch.Tensor]) -> List[Dict[str, np.ndarray]]:
    """The traced module (``torch.jit.load`` of :func:`export_torchscript`'s file) on each image
    in turn, as :func:`.onnx_model.run_onnx` returns them."""
    with torch.no_grad():
        return [{k: v.numpy() for k, v in zip(names, module(im))} for im in images]
