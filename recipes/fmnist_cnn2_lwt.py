"""The paper's CNN2 (108,618 parameters) through layer-wise latents (LWT, 2,688 in total) on Fashion-MNIST.

    mapscale train recipes/fmnist_cnn2_lwt.py                                  # the Hugging Face hub copy (network)
    mapscale train recipes/fmnist_cnn2_lwt.py data.name=imagefolder data.path=/data/fmnist   # local class folders

Fashion-MNIST cannot be shipped: it is read from the hub (``zalando-datasets/fashion_mnist``, needs network
once, then cached) or from a local image folder. The paper reports 93.35% (full training 90.40%). Not yet
measured here.
"""

from mapscale.recipe import DataSection, MappingMethod, OptimSection, Recipe, TargetSection


class FmnistCNN2Lwt(Recipe):
    target = TargetSection(name="cnn2")
    mapping = MappingMethod(grouping="lwt", budget=2688)
    data = DataSection(name="zalando-datasets/fashion_mnist", channels=1, mean=[0.2860], std=[0.3530])
    optim = OptimSection(epochs=20, batch_size=128)
