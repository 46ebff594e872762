"""Deepfake detection (real vs fake frames) with a torchvision ResNet50 trained from scratch through
layer-wise latents (LWT, 2,048 in total across its 107 parameter-owning modules).

    mapscale train recipes/resnet50_deepfake.py                     # the embedded set, 64x64: minutes on a CPU
    mapscale train recipes/resnet50_deepfake.py data.path=/data/celeb-df-frames data.image_size=224

``data.path`` is an image folder with one sub-folder per class, e.g. ``real/`` and ``fake/`` (frames
extracted from Celeb-DF or FaceForensics++ videos). Without it the run trains on the embedded real-versus-generated
set (`mapscale.data.deepfake`: 800 crops of the photos shipped inside scikit-learn and matplotlib, the fakes
2x down-sampled, up-sampled as generators do and JPEG re-compressed), built in the cache at first use; 64x64
keeps a CPU epoch of ResNet50 under a minute, and 224x224 is the usual size for real face frames. The paper's from-scratch deepfake rows use CNN1/CNN2
(LWT 2,792: 89.98% Celeb-DF); this recipe applies the same idea to ResNet50. The default sparse operator holds
nothing per parameter: the fixed state is the init weights the run starts from, 0.088 GiB (0.011 GiB on the
heaviest of 8 ranks with the stage units below, ``mapscale inspect recipes/resnet50_deepfake.py --world-size 8``),
where the dense LWT mapping (``mapping.operator=dense``) would hold 6.23 GiB.
"""

from mapscale.recipe import DataSection, DistributedSection, MappingMethod, OptimSection, Recipe, TargetSection


class Resnet50Deepfake(Recipe):
    target = TargetSection(name="torchvision:resnet50", args={"num_classes": 2})
    mapping = MappingMethod(grouping="lwt", budget=2048)
    data = DataSection(name="deepfake", image_size=64, channels=3, test_size=0.2)
    optim = OptimSection(epochs=10, batch_size=32)
    # One sharding unit per ResNet stage: balances the mapping across ranks better than one whole-model unit
    # (heaviest of 8 ranks 1.13x the even share, against 1.28x) and allows distributed.gather=per-unit.
    distributed = DistributedSection(units=["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"])
