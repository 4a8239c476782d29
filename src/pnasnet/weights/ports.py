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


def port_names(model: nn.Module) -> dict[str, str]:
    """{this package's state-dict key: port key} for every tensor the ports store."""
    table = {}
    for key, variable in tf_slim_variables(model).items():
        name = port_name(variable.tf_name)
        if name is not None:
            table[key] = name
    return table
