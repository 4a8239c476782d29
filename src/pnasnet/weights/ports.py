"""Names of the PyTorch ports of PNASNet-5 Large: Cadene's ``pretrainedmodels`` (file
``pnasnet5large-bf079911.pth``, 1001 classes) and timm's ``pnasnet5large`` (``pnasnet5large.tf_in1k``,
1000 classes: the background row was dropped). Both use the same state-dict keys.

The ports keep TF-Slim's structure under other names, so each port key is derived from the TF-Slim
name of the same tensor by the rewrite rules below (and from there to this package's key by
``tf_slim_names``). The ports' tensors are already in PyTorch layouts.
"""

from __future__ import annotations

import re

from torch import nn

from ..model.cell import PNASNET5_BLOCKS
from .tf_slim_names import tf_slim_variables

_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_BN_LEAF = "(?P<leaf>gamma|beta|moving_mean|moving_variance)"

# (TF-Slim name pattern, port name template); the leaf group is rewritten separately.
_RULES = [
    (r"^conv0/weights$", "conv_0.conv.weight"),
    (rf"^conv0_bn/{_BN_LEAF}$", "conv_0.bn.{leaf}"),
    (rf"^(?P<cell>cell_\w+?)/1x1/weights$", "{cell}.conv_1x1.conv.weight"),
    (rf"^(?P<cell>cell_\w+?)/beginning_bn/{_BN_LEAF}$", "{cell}.conv_1x1.bn.{leaf}"),
    (rf"^(?P<cell>cell_\w+?)/prev_1x1/weights$", "{cell}.conv_prev_1x1.conv.weight"),
    (rf"^(?P<cell>cell_\w+?)/prev_bn/{_BN_LEAF}$", "{cell}.conv_prev_1x1.bn.{leaf}"),
    (rf"^(?P<cell>cell_\w+?)/path(?P<p>[12])_conv/weights$", "{cell}.conv_prev_1x1.path_{p}.conv.weight"),
    (rf"^(?P<cell>cell_\w+?)/final_path_bn/{_BN_LEAF}$", "{cell}.conv_prev_1x1.final_path_bn.{leaf}"),
    (rf"^(?P<cell>cell_\w+?)/comb_iter_(?P<i>\d)/(?P<side>left|right)/separable_\dx\d_(?P<l>[12])/"
     rf"(?P<kind>depthwise|pointwise)_weights$",
     "{cell}.comb_iter_{i}_{side}.separable_{l}.{kind}_conv2d.weight"),
    (rf"^(?P<cell>cell_\w+?)/comb_iter_(?P<i>\d)/(?P<side>left|right)/bn_sep_\dx\d_(?P<l>[12])/{_BN_LEAF}$",
     "{cell}.comb_iter_{i}_{side}.bn_sep_{l}.{leaf}"),
    (rf"^(?P<cell>cell_\w+?)/comb_iter_(?P<i>\d)/(?P<side>left|right)/1x1/weights$",
     "{cell}.comb_iter_{i}_{side}.conv.weight"),
    (rf"^(?P<cell>cell_\w+?)/comb_iter_(?P<i>\d)/(?P<side>left|right)/bn_1/{_BN_LEAF}$",
     "{cell}.comb_iter_{i}_{side}.bn.{leaf}"),
    (r"^final_layer/FC/weights$", "last_linear.weight"),
    (r"^final_layer/FC/biases$", "last_linear.bias"),
]
_COMPILED = [(re.compile(p), t) for p, t in _RULES]

# Keys the ports may carry that hold no weights of the function.
PORT_BOOKKEEPING = re.compile(r"\.num_batches_tracked$")


def port_name(tf_name: str) -> str | None:
    """The Cadene/timm key of a TF-Slim variable, or None where the ports have none (aux head)."""
    for pattern, template in _COMPILED:
        match = pattern.match(tf_name)
        if match:
            groups = match.groupdict()
            if "leaf" in groups:
                groups["leaf"] = _BN[groups["leaf"]]
            return template.format(**groups)
    return None


# Kernel size of each separable branch, (block, side) -> K: PNASNet-5's cell, the same everywhere.
_SEPARABLE_KERNELS = {(i, side): int(op.split("_")[1][0])
                      for i, pair in enumerate(PNASNET5_BLOCKS)
                      for side, (op, _) in zip(("left", "right"), pair) if op.startswith("separable")}
_FROM_PORT = [
    (r"^conv_0\.conv\.weight$", "conv0/weights"),
    (r"^conv_0\.bn\.(?P<bn>\w+)$", "conv0_bn/{bn}"),
    (r"^(?P<cell>cell_\w+?)\.conv_1x1\.conv\.weight$", "{cell}/1x1/weights"),
    (r"^(?P<cell>cell_\w+?)\.conv_1x1\.bn\.(?P<bn>\w+)$", "{cell}/beginning_bn/{bn}"),
    (r"^(?P<cell>cell_\w+?)\.conv_prev_1x1\.conv\.weight$", "{cell}/prev_1x1/weights"),
    (r"^(?P<cell>cell_\w+?)\.conv_prev_1x1\.bn\.(?P<bn>\w+)$", "{cell}/prev_bn/{bn}"),
    (r"^(?P<cell>cell_\w+?)\.conv_prev_1x1\.path_(?P<p>[12])\.conv\.weight$", "{cell}/path{p}_conv/weights"),
    (r"^(?P<cell>cell_\w+?)\.conv_prev_1x1\.final_path_bn\.(?P<bn>\w+)$", "{cell}/final_path_bn/{bn}"),
    (r"^(?P<cell>cell_\w+?)\.comb_iter_(?P<i>\d)_(?P<side>left|right)\.separable_(?P<l>[12])\."
     r"(?P<kind>depthwise|pointwise)_conv2d\.weight$",
     "{cell}/comb_iter_{i}/{side}/separable_{k}x{k}_{l}/{kind}_weights"),
    (r"^(?P<cell>cell_\w+?)\.comb_iter_(?P<i>\d)_(?P<side>left|right)\.bn_sep_(?P<l>[12])\.(?P<bn>\w+)$",
     "{cell}/comb_iter_{i}/{side}/bn_sep_{k}x{k}_{l}/{bn}"),
    (r"^(?P<cell>cell_\w+?)\.comb_iter_(?P<i>\d)_(?P<side>left|right)\.conv\.weight$",
     "{cell}/comb_iter_{i}/{side}/1x1/weights"),
    (r"^(?P<cell>cell_\w+?)\.comb_iter_(?P<i>\d)_(?P<side>left|right)\.bn\.(?P<bn>\w+)$",
     "{cell}/comb_iter_{i}/{side}/bn_1/{bn}"),
    (r"^last_linear\.weight$", "final_layer/FC/weights"),
    (r"^last_linear\.bias$", "final_layer/FC/biases"),
]
_FROM_PORT_COMPILED = [(re.compile(p), t) for p, t in _FROM_PORT]
_BN_FROM_TORCH = {v: k for k, v in _BN.items()}


def tf_name_of_port_key(key: str) -> str | None:
    """The TF-Slim name of a Cadene/timm key (the inverse of ``port_name``), or None if unknown."""
    for pattern, template in _FROM_PORT_COMPILED:
        match = pattern.match(key)
        if not match:
            continue
        groups = match.groupdict()
        if "bn" in groups:
            if groups["bn"] not in _BN_FROM_TORCH:
                return None
            groups["bn"] = _BN_FROM_TORCH[groups["bn"]]
        if "side" in groups and "l" in groups:
            kernel = _SEPARABLE_KERNELS.get((int(groups["i"]), groups["side"]))
            if kernel is None:
                return None
            groups["k"] = kernel
        return template.format(**groups)
    return None


def port_names(model: nn.Module) -> dict[str, str]:
    """{this package's state-dict key: port key} for every tensor the ports store."""
    table = {}
    for key, variable in tf_slim_variables(model).items():
        name = port_name(variable.tf_name)
        if name is not None:
            table[key] = name
    return table
