"""The Mapping Networks method in pure PyTorch: layout, fixed mapping operators, generator, mapped model.

Nothing here knows about recipes, command lines or distributed ranks (DESIGN.md section 3).
"""

from mapscale.mapping.contract import Generator, Part
from mapscale.mapping.direct import DirectGenerator
from mapscale.mapping.finetune import finetune_model, load_pretrained
from mapscale.mapping.generator import GeneratorConfig, MappingGenerator
from mapscale.mapping.layout import GroupSpec, ParamLayout, TensorSpec, sqrt_budget_split
from mapscale.mapping.mapped import MappedModel, direct_model, map_model
from mapscale.mapping.operators import OPERATORS, DenseOperator, MappingOperator

__all__ = [
    "OPERATORS",
    "DenseOperator",
    "DirectGenerator",
    "Generator",
    "GeneratorConfig",
    "GroupSpec",
    "MappedModel",
    "MappingGenerator",
    "MappingOperator",
    "ParamLayout",
    "Part",
    "TensorSpec",
    "direct_model",
    "finetune_model",
    "load_pretrained",
    "map_model",
    "sqrt_budget_split",
]
