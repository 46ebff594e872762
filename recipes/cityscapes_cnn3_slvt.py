"""Semantic segmentation (Cityscapes-style, 19 classes) with the paper's U-Net-like CNN3 (1,734,803
parameters) through one 8,192-dimensional latent (SLVT).

    mapscale train recipes/cityscapes_cnn3_slvt.py data.path=/data/cityscapes-256

``data.path`` holds ``images/`` and ``masks/`` (same file stems; mask pixels are class ids 0-18, 255 =
ignore), resized to 256x256. The paper reports 97.92% pixel accuracy and 0.4623 mIoU (full training: 93.21%,
0.4957). Not yet measured here. The default sparse operator holds nothing per parameter (0.007 GiB of fixed
state: the init weights); the dense mapping (``mapping.operator=dense``) would hold 1,734,803 x 8,192 floats
(53 GiB).
"""

from mapscale.recipe import DataSection, MappingMethod, OptimSection, Recipe, TargetSection


class CityscapesCNN3Slvt(Recipe):
    task = "segmentation"
    target = TargetSection(name="cnn3", args={"classes": 19})
    mapping = MappingMethod(grouping="slvt", budget=8192)
    data = DataSection(name="segfolder", path=None, image_size=256, channels=3, test_size=0.2)
    optim = OptimSection(epochs=20, batch_size=8)
