"""mapscale: train big networks through tiny trainable latent vectors (Mapping Networks).

    import mapscale
    mapped = mapscale.map_model(net, grouping="lwt", budget=2048, seed=0)
    tuned = mapscale.finetune_model(pretrained, tuned=["layer4.*", "fc.*"], block_size=250, budget=1024)
"""

from mapscale.mapping import (
    finetune_model,
    GeneratorConfig,
    MappedModel,
    MappingGenerator,
    ParamLayout,
    map_model,
)

__version__ = "0.1.0"
__all__ = ["GeneratorConfig", "MappedModel", "MappingGenerator", "ParamLayout", "finetune_model", "map_model", "__version__"]
