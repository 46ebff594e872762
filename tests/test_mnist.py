"""A mapped CNN learns the shipped MNIST subset through 2,048 trainable numbers (through the library's trainer)."""

from mapscale.recipe import DataSection, MappingMethod, OptimSection, OutputSection, Recipe, TargetSection
from mapscale.train import train


def test_mapped_cnn_reaches_90_percent_on_shipped_mnist_with_2048_trainable(tmp_path):
    # Around the target's init weights (offset "init"), as recipes/mnist_cnn2.py trains CNN2.
    recipe = Recipe(
        target=TargetSection(name="small_mnist_cnn"),
        mapping=MappingMethod(grouping="slvt", budget=2048, offset="init"),
        data=DataSection(name="shipped_mnist", test_size=1000),
        optim=OptimSection(lr=0.05, epochs=6, batch_size=64),
        output=OutputSection(progress=False, eval_every=10_000),
    )
    result = train(recipe, tmp_path)
    assert result.trainable == 2048 and result.target_params == 14_410
    print(f"shipped MNIST test accuracy with {result.trainable} trainable: {result.final['accuracy']:.4f}")
    assert result.final["accuracy"] >= 0.90
