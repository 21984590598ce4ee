# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The ROIAlign operators, one file per step of the algorithm (the module that calls them,
``ROIAlignPooler``, is :mod:`roi_plugin.modeling.poolers`):

* :mod:`.levels`       which level pools a box (the FPN rule);
* :mod:`.geometry`     where its sample points lie and which pixels each one reads;
* :mod:`.rotated_geometry`  the same for rotated boxes (``pooler_type="ROIAlignRotated"``);
* :mod:`.axis_taps`, :mod:`.gather_plan`, :mod:`.gather`   the default sampler: bins summed
  from bags of taps;
* :mod:`.grid_sample`  the other sampler: bins summed from ``F.grid_sample`` reads;
* :mod:`.roi_align_ops`  the two samplers as operators ``torch.ops.roi_plugin.*`` (forward,
  backward, fake, autograd): what the module runs, eager, compiled, scripted or traced;
* :mod:`.static`       the shape-static paths used while exporting to ONNX (upright and rotated);
* :mod:`.rotated_ops`  pure-PyTorch rotated IoU / NMS operators where Detectron2 has no ``_C``,
  and their exportable forms (ONNX);
* :mod:`.threads`      the sampler's single-intra-op-thread scope.

See docs/ARCHITECTURE.md.
"""
from .levels import assign_boxes_to_levels
from .static import EXPORT_MAX_GRID

__all__ = ["assign_boxes_to_levels", "EXPORT_MAX_GRID"]
