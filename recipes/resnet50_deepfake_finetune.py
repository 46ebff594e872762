"""Deepfake detection (real vs fake frames) by fine-tuning an ImageNet-pretrained torchvision ResNet50
through one 1,024-dimensional latent (SLVT): its ``layer4`` and ``fc`` tensors (14,968,834 weights) are
modulated by 59,902 generated elements, each covering L = 250 consecutive weights; everything else stays
frozen at the pretrained values. 1,024 trainable values in all.

    mapscale train recipes/resnet50_deepfake_finetune.py target.weights=/path/resnet50-0676ba61.pth data.path=/data/celeb-df-frames

Weights are never downloaded here: fetch torchvision's ResNet50 ImageNet weights
(https://download.pytorch.org/models/resnet50-0676ba61.pth, ``ResNet50_Weights.IMAGENET1K_V1``) and give the
file as ``target.weights``. The checkpoint's 1000-class head does not fit the 2-class ``fc``: it keeps its
seeded init and is tuned through its elements like ``layer4``. ``data.path`` is an image folder with one
sub-folder per class (``real/``, ``fake/``). The paper's fine-tuning table reports, for SLVT 1,024,
``layer4`` + ``fc``, L = 250: 92.10 / 89.23 (its two deepfake benchmarks); not yet measured here.
"""

from mapscale.recipe import DataSection, FinetuneMethod, OptimSection, Recipe, TargetSection


class Resnet50DeepfakeFinetune(Recipe):
    target = TargetSection(name="torchvision:resnet50", args={"num_classes": 2}, weights=None)
    mapping = FinetuneMethod(grouping="slvt", budget=1024, tuned=["layer4.*", "fc.*"], block_size=250, form="additive")
    data = DataSection(name="deepfake", image_size=224, channels=3, test_size=0.2)
    optim = OptimSection(lr=2e-2, epochs=5, batch_size=32)
