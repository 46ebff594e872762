"""The base of every recipe section: a pydantic model with ``extra="forbid"`` whose fields carry docstrings."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic._internal._model_construction import ModelMetaclass


class RecipeError(ValueError):
    """A recipe that cannot be loaded or validated; the message says what to change."""


class _SectionMeta(ModelMetaclass):
    """Lets a subclass override an inherited field by plain assignment (``mapping = MappingMethod(...)``):
    pydantic wants every override annotated, so the parent's annotation is copied in."""

    def __new__(mcs, name, bases, namespace, **kwargs):
        annotations = namespace.setdefault("__annotations__", {})
        for base in bases:
            for field_name, field in getattr(base, "model_fields", {}).items():
                if field_name in namespace and field_name not in annotations:
                    # a union's discriminator (the mapping section's ``method``) lives beside the annotation
                    annotations[field_name] = field.annotation if field.discriminator is None else Annotated[field.annotation, Field(discriminator=field.discriminator)]
        return super().__new__(mcs, name, bases, namespace, **kwargs)


class Section(BaseModel, metaclass=_SectionMeta):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True, frozen=False)
