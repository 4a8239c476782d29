"""TF-Slim variable names <-> this package's parameters.

The rule (the model's modules repeat TF-Slim's scopes, see ``pnasnet.model.cell``):

1. a parameter's module path with ``.`` -> ``/``, and the module ``conv_1x1`` -> scope ``1x1``;
2. the leaf: batch norm ``weight/bias/running_mean/running_var`` -> ``gamma/beta/moving_mean/
   moving_variance``; a separable conv's ``depthwise.weight`` / ``pointwise.weight`` ->
   ``depthwise_weights`` / ``pointwise_weights``; other convs and fully connected layers
   ``weight/bias`` -> ``weights/biases``;
3. layouts: TF convs are HWIO, PyTorch OIHW (transpose 3,2,0,1); depthwise [K,K,C,1] -> [C,1,K,K]
   (transpose 2,3,0,1); TF fully connected [in,out] is PyTorch's transposed.

Example: ``cell_4.comb_iter_0.left.separable_5x5_1.depthwise.weight`` <->
``cell_4/comb_iter_0/left/separable_5x5_1/depthwise_weights``; ``cell_0.conv_1x1.weight`` <->
``cell_0/1x1/weights``; ``final_layer.FC.bias`` <-> ``final_layer/FC/biases``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

_BN_LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
              "running_var": "moving_variance"}
_DENSE_LEAVES = {"weight": "weights", "bias": "biases"}

# Variables a TF-Slim training checkpoint may hold that are not part of the network's function:
# the global step (TF-Slim creates it inside the first drop-path scope when none exists) and
# optimizer slots.
_TRAINING_ONLY = re.compile(
    r"(^|/)global_step$|/(Momentum|RMSProp(_\d+)?|Adam(_\d+)?|Adagrad|Ftrl(_\d+)?)$|"
    r"^(beta1_power|beta2_power)$")
_EMA_SUFFIX = "/ExponentialMovingAverage"


@dataclass(frozen=True)
class TFVariable:
    """Where one PyTorch tensor lives in a TF-Slim checkpoint and how to lay it out."""

    tf_name: str
    to_torch: Callable[[np.ndarray], np.ndarray]
    to_tf: Callable[[np.ndarray], np.ndarray]


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _hwio_to_oihw(a: np.ndarray) -> np.ndarray:
    return a.transpose(3, 2, 0, 1)


def _oihw_to_hwio(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0)


def _depthwise_to_torch(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 0, 1)  # [K,K,C,1] -> [C,1,K,K]


def _depthwise_to_tf(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 0, 1)  # [C,1,K,K] -> [K,K,C,1]


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.T


def tf_name_of_key(key: str) -> str | None:
    """The TF-Slim name of a state-dict key by the rule above (a pure string rewrite, so it works
    for any configuration), or None for keys TF has no counterpart for."""
    *scopes, leaf = key.split(".")
    if not scopes or leaf == "num_batches_tracked":
        return None
    scopes = ["1x1" if s == "conv_1x1" else s for s in scopes]
    if "bn" in scopes[-1]:  # every batch norm, and nothing else, has "bn" in its TF scope name
        name = _BN_LEAVES.get(leaf)
    elif scopes[-1] in ("depthwise", "pointwise"):
        name = scopes.pop() + "_weights" if leaf == "weight" else None
    else:
        name = _DENSE_LEAVES.get(leaf)
    return None if name is None else "/".join(scopes + [name])


def layouts(tf_name: str, ndim: int) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """(TF -> PyTorch, PyTorch -> TF) layout changes of a tensor with this TF name and rank."""
    if tf_name.endswith("depthwise_weights"):
        return _depthwise_to_torch, _depthwise_to_tf
    if ndim == 4:
        return _hwio_to_oihw, _oihw_to_hwio
    if ndim == 2:
        return _transpose, _transpose
    return _identity, _identity


def tf_slim_variables(model: nn.Module) -> dict[str, TFVariable]:
    """{state-dict key: TFVariable} for every tensor of ``model`` that TF-Slim stores."""
    table: dict[str, TFVariable] = {}
    for key, tensor in model.state_dict().items():
        name = tf_name_of_key(key)
        if name is not None:
            table[key] = TFVariable(name, *layouts(name, tensor.dim()))
    return table


def export_tf_slim_variables(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's weights under TF-Slim names and layouts (float32 numpy arrays)."""
    state = model.state_dict()
    return {v.tf_name: np.ascontiguousarray(v.to_tf(state[key].detach().cpu().numpy()))
            for key, v in tf_slim_variables(model).items()}


class WeightsMismatchError(ValueError):
    """The variables do not fit the model; the message lists every problem by name."""


@dataclass
class LoadReport:
    """What happened to each variable when loading TF-Slim names into a model."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)       # needed by the model, not in the source
    unexpected: list[str] = field(default_factory=list)    # in the source, not used by the model
    mismatched: list[str] = field(default_factory=list)    # "name: source shape vs model shape"
    ignored: list[str] = field(default_factory=list)       # training-only or not wanted (e.g. aux)
    left_initialised: list[str] = field(default_factory=list)  # optional parts absent (aux head)
    used_moving_averages: bool = False
    background_row_added: bool = False   # a 1000-class source given an untrained class 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, source: str = "the checkpoint") -> str:
        lines = []
        for title, names in (("missing from " + source, self.missing),
                             ("unexpected in " + source, self.unexpected),
                             ("wrong shape", self.mismatched)):
            if names:
                shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
                lines.append(f"{len(names)} {title}: {shown}")
        return "; ".join(lines) if lines else f"all {len(self.loaded)} variables loaded"


# Parts a model may be built without: the aux head and the final layer (feature-vector models).
_OPTIONAL_PART = re.compile(r"aux_\d+/aux_logits/|final_layer/FC/")


def _is_optional(tf_name: str) -> bool:
    # The released checkpoints have no aux head (tensorflow/models#3822, #8643).
    return tf_name.startswith("aux_")


def load_tf_slim_variables(model: nn.Module, source: Any, *, prefer_moving_averages: bool = False,
                           strict: bool = True, source_name: str = "the checkpoint",
                           check_only: bool = False) -> LoadReport:
    """Copy TF-Slim-named variables into ``model``.

    ``source`` is a mapping ``{tf name: array}`` or a reader with ``names()`` and ``read(name)``
    (``pnasnet.weights.tf_checkpoint.TFCheckpoint``), read one tensor at a time. Global steps and
    optimizer slots are ignored; ``ExponentialMovingAverage`` shadows are ignored unless
    ``prefer_moving_averages`` asks for them in place of the raw variables. Variables of an aux
    head or a final layer the model does not have are ignored; an aux head the source lacks stays
    initialised. With ``strict`` any missing, unexpected or mis-shaped variable raises
    ``WeightsMismatchError`` naming them all, before the model is changed. ``check_only`` compares
    names and shapes without reading or copying any tensor (``pnasnet weights inspect``).
    """
    if hasattr(source, "read") and hasattr(source, "names"):
        names, read = list(source.names()), source.read
        shape_of = getattr(source, "shape", lambda n: np.shape(read(n)))
    else:
        names, read = list(source.keys()), source.__getitem__
        shape_of = lambda n: np.shape(source[n])  # noqa: E731
    available = set(names)
    report = LoadReport()
    table = tf_slim_variables(model)
    wanted = {v.tf_name for v in table.values()}
    state = model.state_dict()

    plan: list[tuple[str, str, TFVariable]] = []  # (state key, source name, variable)
    misshaped: set[str] = set()
    for key, var in table.items():
        name = var.tf_name
        if prefer_moving_averages and name + _EMA_SUFFIX in available:
            name = name + _EMA_SUFFIX
            report.used_moving_averages = True
        if name not in available:
            (report.left_initialised if _is_optional(name) else report.missing).append(var.tf_name)
            continue
        # The TF shape the model needs: its own shape put through the layout change (a view).
        needed = var.to_tf(np.broadcast_to(np.uint8(0), tuple(state[key].shape))).shape
        if tuple(shape_of(name)) != tuple(needed):
            report.mismatched.append(f"{name}: {tuple(shape_of(name))} in source, model needs {tuple(needed)}")
            misshaped.add(name)
            continue
        plan.append((key, name, var))

    used = {name for _, name, _ in plan} | misshaped
    for name in sorted(available - used):
        base = name[: -len(_EMA_SUFFIX)] if name.endswith(_EMA_SUFFIX) else name
        # Ignored: training-only state, the raw/averaged twin of a variable loaded the other way,
        # and the parts (aux head, final layer) this model was built without.
        if _TRAINING_ONLY.search(name) or base in wanted or _OPTIONAL_PART.match(base):
            report.ignored.append(name)
        else:
            report.unexpected.append(name)

    if strict and not report.ok:
        raise WeightsMismatchError(f"cannot load {source_name} into {type(model).__name__}: "
                                   + report.describe(source_name))
    if check_only:
        report.loaded.extend(var.tf_name for _, _, var in plan)
        return report
    with torch.no_grad():
        for key, name, var in plan:
            value = torch.from_numpy(np.ascontiguousarray(var.to_torch(np.asarray(read(name)))))
            state[key].copy_(value.to(state[key].dtype))
            report.loaded.append(var.tf_name)
    return report
