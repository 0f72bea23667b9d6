"""Does a state_dict fit a model? Key and shape diagnosis, and loading what fits.

A strict load needs every key in both, the same shapes and the same kind of values (float
weights are never filled from integer or bool tensors, which ``load_state_dict`` would cast
silently). Errors list the differences and name the probable cause: another number of classes,
or (read from the key names and shapes) another BiFormer variant.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

from ..errors import CheckpointError
from ..models import describe_layout, known_layouts

__all__ = ["Fit", "LoadResult", "diagnose", "load_state"]

_SHOWN = 5  # keys listed per category in error messages


@dataclass(frozen=True)
class LoadResult:
    """What a load did: the keys it could not load (all empty on a strict load)."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[str] = field(default_factory=list)  # shape or kind differs: kept
    entry: str = ""  # the checkpoint entry the weights came from ("model", "state_dict", ...)


@dataclass(frozen=True)
class Fit:
    """How a state_dict and a model's differ."""

    missing: list[str]
    unexpected: list[str]
    shapes: list[str]  # same key, other shape
    kinds: list[str]  # same key, float vs integer/bool values

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.shapes or self.kinds)

    def only(self, prefix: str) -> bool:
        """True when every difference is under ``prefix`` (e.g. the classifier, ``head.``)."""
        return all(k.startswith(prefix) for k in self.missing + self.unexpected + self.shapes
                   + self.kinds)


def _kind(t: Tensor) -> str:
    return "float" if t.is_floating_point() or t.is_complex() else str(t.dtype)


def diagnose(model: nn.Module, state_dict: Mapping[str, Tensor]) -> Fit:
    expected = model.state_dict()
    common = [k for k in state_dict if k in expected]
    return Fit(
        missing=[k for k in expected if k not in state_dict],
        unexpected=[k for k in state_dict if k not in expected],
        shapes=[k for k in common if tuple(state_dict[k].shape) != tuple(expected[k].shape)],
        kinds=[k for k in common if tuple(state_dict[k].shape) == tuple(expected[k].shape)
               and _kind(state_dict[k]) != _kind(expected[k])],
    )


def _listed(title: str, keys: list[str]) -> str:
    more = ", ..." if len(keys) > _SHOWN else ""
    return f"  {title} ({len(keys)}): {', '.join(keys[:_SHOWN])}{more}"


def _layout_hint(model_shapes: Mapping[str, tuple[int, ...]],
                 ckpt_shapes: Mapping[str, tuple[int, ...]]) -> str:
    """A sentence naming the model the checkpoint probably belongs to, if it can tell."""
    ours, theirs = describe_layout(model_shapes), describe_layout(ckpt_shapes)
    if theirs is None:
        return ("it does not look like a BiFormer checkpoint (no 'stages.*.blocks.*' or official "
                "'stages.*.*' weights)")
    if ours is None or ours == theirs:
        return ""
    names = known_layouts()

    def name(layout: tuple[str, tuple[int, ...], tuple[int, ...]]) -> str:
        family, depths, dims = layout
        known = names.get(layout)
        return f"{known} ({family}: depths {depths}, dims {dims})" if known else (
            f"a {family} model with depths {depths}, dims {dims}")

    return f"the checkpoint is probably of {name(theirs)}, but the model is {name(ours)}"


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def _cause(model: nn.Module, state_dict: Mapping[str, Tensor], fit: Fit) -> str:
    expected = model.state_dict()
    if fit.kinds:
        k = fit.kinds[0]
        return (f"the checkpoint stores {state_dict[k].dtype} values where the model has "
                f"{expected[k].dtype} weights (e.g. {k}): it is not a file of trained weights "
                "for this model. Create the matching model")
    if not fit.missing and not fit.unexpected and fit.only("head."):
        n_ckpt = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else "?"
        return (f"the checkpoint's classifier has {n_ckpt} classes and the model's "
                f"{getattr(model, 'num_classes', '?')}. Create the model with "
                f"num_classes={n_ckpt}, or load with new_head=True (fine-tuning: the new "
                "classifier keeps its initialisation; strict=False does the same for any key)")
    hint = _layout_hint({k: tuple(v.shape) for k, v in expected.items()},
                        {k: tuple(v.shape) for k, v in state_dict.items()})
    return (f"{hint or 'a checkpoint of another model or of another configuration'}. Create "
            "the matching model, or pass strict=False to load only what fits")


def _refusal(model: nn.Module, state_dict: Mapping[str, Tensor], fit: Fit,
             path: str | os.PathLike) -> CheckpointError:
    expected = model.state_dict()
    lines = [f"{path} does not fit {_model_name(model)}:"]
    if fit.missing:
        lines.append(_listed("missing keys", fit.missing))
    if fit.unexpected:
        lines.append(_listed("unexpected keys", fit.unexpected))
    if fit.shapes:
        shown = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
                 for k in fit.shapes[:_SHOWN]]
        lines.append(f"  shape mismatches ({len(fit.shapes)}, checkpoint vs model): "
                     + "; ".join(shown) + ("; ..." if len(fit.shapes) > _SHOWN else ""))
    if fit.kinds:
        lines.append(_listed("values of another kind", fit.kinds))
    lines.append(f"Probable cause: {_cause(model, state_dict, fit)}.")
    return CheckpointError("\n".join(lines))


def _classifier(model: nn.Module) -> str:
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    return f"{name}."


def load_state(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    path: str | os.PathLike = "checkpoint",
    strict: bool = True,
    new_head: bool = False,
    entry: str = "",
) -> LoadResult:
    """Load ``state_dict`` (already in the model's layout) into ``model``.

    ``strict``: every difference is an error (``CheckpointError``). ``new_head``: differences
    confined to the classifier are allowed (fine-tuning to other classes, or a headless model):
    the checkpoint's classifier is dropped and the model keeps its own. ``strict=False``: load
    what fits, warn about the rest. Values of another kind are never loaded.
    """
    fit = diagnose(model, state_dict)
    head = _classifier(model)
    tolerated = not strict or (new_head and fit.only(head) and not fit.kinds)
    if not fit.exact and not tolerated:
        raise _refusal(model, state_dict, fit, path)
    skip = set(fit.shapes) | set(fit.kinds) | set(fit.unexpected)
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in skip}, strict=False)
    if not fit.exact and not (new_head and fit.only(head)):
        warnings.warn(
            f"loading {path} with strict=False: {len(fit.missing)} missing and "
            f"{len(fit.shapes) + len(fit.kinds)} shape-mismatched parameters keep their current "
            "values "
            f"(e.g. {(fit.shapes + fit.kinds + fit.missing)[:_SHOWN]}); {len(fit.unexpected)} "
            "checkpoint keys unused",
            stacklevel=3,
        )
    return LoadResult(fit.missing, fit.unexpected, fit.shapes + fit.kinds, entry)
