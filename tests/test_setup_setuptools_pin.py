"""Guards the set-up, not the library: scripts/bootstrap.sh names ``setuptools>=77.0.3,<81`` in
every pip call (torch 2.14.1 requires 77.0.3 or later; setuptools 81 removed ``pkg_resources``,
which ``detectron2.model_zoo`` imports). In the environment that ``./run.sh`` builds, the model
zoo's YAML and LazyConfig files resolve from the installed detectron2, as the plugin's docs, tools
and tests use them.
"""
import os

from detectron2.config import LazyConfig, get_cfg


def test_setup_pins_setuptools_below_81_for_detectron2_model_zoo():
    import pkg_resources  # noqa: F401  (what setuptools 81 removed)

    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert os.path.isfile(path)
    get_cfg().merge_from_file(path)  # resolves its _BASE_ inside the installed package
    # A LazyConfig recipe: its relative imports of common/ resolve inside the package too.
    recipe = LazyConfig.load(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"))
    assert "model" in recipe and "train" in recipe
