# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""ROIAlign as a small package, one file per step of the algorithm:

* :mod:`.levels`       which level pools a box (the FPN rule);
* :mod:`.geometry`     where its sample points lie and which pixels each one reads;
* :mod:`.rotated_geometry`  the same for rotated boxes (``pooler_type="ROIAlignRotated"``);
* :mod:`.gather_plan`, :mod:`.gather`   the default sampler: bins summed from bags of taps;
* :mod:`.grid_sample`  the other sampler: bins summed from ``F.grid_sample`` reads;
* :mod:`.static`       the shape-static path used while tracing / exporting;
* :mod:`.poolers`      the module: validates, routes and dispatches.

See docs/ARCHITECTURE.md.
"""
from .levels import assign_boxes_to_levels
from .poolers import SAMPLERS, GridSampleROIPooler, ROIAlignPooler
from .static import EXPORT_MAX_GRID

__all__ = ["ROIAlignPooler", "GridSampleROIPooler", "assign_boxes_to_levels", "SAMPLERS", "EXPORT_MAX_GRID"]
