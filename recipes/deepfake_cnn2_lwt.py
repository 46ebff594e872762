"""Deepfake detection (real vs fake face frames) with the paper's CNN2 through layer-wise latents (LWT 2,688).

    mapscale train recipes/deepfake_cnn2_lwt.py data.path=/data/celeb-df-frames

``data.path`` is an image folder with one sub-folder per class (``real/``, ``fake/``); frames are resized to
28x28 RGB, CNN2's input size. The paper reports 86.09% (Celeb-DF) / 86.28% (FF++) for CNN2 LWT 2,688, against
79.03% / 79.85% for full training. Not yet measured here (the datasets cannot be shipped).
"""

from mapscale.recipe import DataSection, MappingMethod, OptimSection, Recipe, TargetSection


class DeepfakeCNN2Lwt(Recipe):
    target = TargetSection(name="cnn2", args={"in_channels": 3, "classes": 2})
    mapping = MappingMethod(grouping="lwt", budget=2688)
    data = DataSection(name="deepfake", image_size=28, channels=3, test_size=0.2)
    optim = OptimSection(epochs=10, batch_size=64)
