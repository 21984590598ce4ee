# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Training and demo glue behind ``tools/``, as Detectron2's own ``engine`` package:

* :mod:`.train`       the trainer (COCO evaluation, DDP on CPU too), config loading and checks
  with one-line errors, ``--dataset`` registration;
* :mod:`.lazy_train`  the LazyConfig training loop;
* :mod:`.demo`        a trained model on image files: pictures and ``detections.json``.
"""
