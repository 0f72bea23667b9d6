"""One registry of the BiFormer models: what the paper reports and the training drop path.

Every entrypoint of a family file carries its numbers in a ``@model_spec(...)`` line right
under ``@register_model``; ``MODEL_SPECS`` (and ``biformer.models.MODEL_NAMES``) are filled as the
family files are imported, so adding a size is one edit next to its entrypoint. ``biformer info``,
the training recipe and the checkpoint diagnosis read this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["MODEL_SPECS", "ModelSpec", "model_spec"]

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class ModelSpec:
    """The paper's numbers for one registered model and its recommended training drop path.

    Attributes:
        params_m: parameters in millions (the paper's table).
        gmacs: multiply-accumulates at 224x224 in billions (the paper's table).
        top1: ImageNet-1K top-1 accuracy in percent (the paper's table).
        drop_path_rate: stochastic-depth rate of the official ImageNet training run.
    """

    params_m: float
    gmacs: float
    top1: float
    drop_path_rate: float


MODEL_SPECS: dict[str, ModelSpec] = {}


def model_spec(*, params_m: float, gmacs: float, top1: float,
               drop_path_rate: float) -> Callable[[F], F]:
    """Record the spec of the entrypoint it decorates (under the entrypoint's name)."""
    spec = ModelSpec(params_m=params_m, gmacs=gmacs, top1=top1, drop_path_rate=drop_path_rate)

    def record(fn: F) -> F:
        MODEL_SPECS[fn.__name__] = spec
        return fn

    return record
