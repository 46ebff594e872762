"""The recipe the pinned runs override: ``recipes/mnist_cnn2.py`` as it was when their numbers were recorded
(commit f2a6190), every setting a later default could change spelled out, so that new defaults leave the pinned
numbers alone."""

from mapscale.recipe import DataSection, MappingMethod, OptimSection, Recipe, TargetSection


class MnistCNN2(Recipe):
    target = TargetSection(name="cnn2")
    mapping = MappingMethod(grouping="slvt", budget=2048, budget_power=0.5, offset="init", operator="dense", modulation="multiplicative", modulation_scale=0.1, activation="identity")
    data = DataSection(name="shipped_mnist", test_size=1000)
    optim = OptimSection(optimizer="adam", lr=5e-2, epochs=8, batch_size=64, schedule="onecycle", warmup_fraction=0.15)
