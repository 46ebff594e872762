"""mapscale: train big networks through tiny trainable latent vectors (Mapping Networks).

    import mapscale
    mapped = mapscale.map_model(net, grouping="lwt", budget=2048, seed=0)
"""

from mapscale.mapping import (
    GeneratorConfig,
    MappedModel,
    MappingGenerator,
    ParamLayout,
    map_model,
)

__version__ = "0.1.0"
__all__ = ["GeneratorConfig", "MappedModel", "MappingGenerator", "ParamLayout", "map_model", "__version__"]
