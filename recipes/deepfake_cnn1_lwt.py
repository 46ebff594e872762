"""Deepfake detection (real vs fake face frames) with the paper's CNN1 through layer-wise latents (LWT 2,792).

    mapscale train recipes/deepfake_cnn1_lwt.py data.path=/data/celeb-df-frames
    mapscale train recipes/deepfake_cnn1_lwt.py data.path=/data/celeb-df-frames mapping.grouping=slvt mapping.budget=2048
    mapscale train recipes/deepfake_cnn1_lwt.py data.path=/data/celeb-df-frames mapping.method=full optim.lr=1e-3

``data.path`` is an image folder with one sub-folder per class (``real/``, ``fake/``); frames are resized to
28x28 RGB, CNN1's input size. The paper reports 89.98% (Celeb-DF) / 88.05% (FF++) for CNN1 LWT 2,792, 88.88% /
85.23% for SLVT 2,048 and 83.13% / 82.44% for full training. Not measured here (the datasets cannot be shipped).
"""

from mapscale.recipe import DataSection, MappingMethod, OptimSection, Recipe, TargetSection


class DeepfakeCNN1Lwt(Recipe):
    target = TargetSection(name="cnn1", args={"in_channels": 3, "classes": 2})
    mapping = MappingMethod(grouping="lwt", budget=2792)
    data = DataSection(name="deepfake", image_size=28, channels=3, test_size=0.2)
    optim = OptimSection(epochs=10, batch_size=64)
