"""PNASNet-5 (Liu et al., "Progressive Neural Architecture Search", 2018), Large and Mobile, as
TF-Slim builds it (``nets/nasnet/pnasnet.py``): the ImageNet stem (conv0 + two stride-2 cells),
``num_cells`` PNASNet cells with stride-2 cells at the reduction indices, an optional auxiliary head
and the final layer (ReLU, global average pool, dropout, fully connected). ``bounded_activation``
is TF-Slim's ``use_bounded_activation``: ReLU6 in place of every ReLU and clipped branch outputs
(see ``cell``), the form meant for quantized inference.

The model takes float images ``[N, 3, H, W]`` in [0, 1] and maps them to [-1, 1] itself, like the
TF-Hub modules. ``classify`` returns logits over 1001 classes (0 = background), ``features`` the
pooled vector before dropout (4320-d Large, 1080-d Mobile).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .cell import PNASNetCell
from .ops import DEFAULT_BN_DECAY, activation, batch_norm


@dataclass(frozen=True)
class PNASNetConfig:
    """Hyperparameters of a PNASNet-5 variant; field names follow TF-Slim's HParams."""

    name: str
    num_cells: int
    num_conv_filters: int
    stem_multiplier: float
    image_size: int
    drop_path_keep_prob: float
    filter_scaling_rate: float = 2.0
    num_reduction_layers: int = 2
    dense_dropout_keep_prob: float = 0.5
    total_training_steps: int = 250_000
    use_bounded_activation: bool = False

    def reduction_indices(self) -> list[int]:
        """TF-Slim ``calc_reduction_layers``: cells int(k/(R+1) * num_cells) for k = 1..R."""
        r = self.num_reduction_layers
        return [int(float(k) / (r + 1) * self.num_cells) for k in range(1, r + 1)]

    def aux_cell_index(self) -> int | None:
        """The aux head sits after the cell before the second reduction (cell 7 Large, 5 Mobile)."""
        reductions = self.reduction_indices()
        return reductions[1] - 1 if len(reductions) >= 2 else None


LARGE = PNASNetConfig("pnasnet5_large", num_cells=12, num_conv_filters=216, stem_multiplier=3.0,
                      image_size=331, drop_path_keep_prob=0.6)
MOBILE = PNASNetConfig("pnasnet5_mobile", num_cells=9, num_conv_filters=54, stem_multiplier=1.0,
                       image_size=224, drop_path_keep_prob=1.0)

# Images further than this outside [0, 1] are taken for a wrong value range (0..255, or [-1, 1]).
_RANGE_TOLERANCE = 0.1


def check_images(images: torch.Tensor, *, min_size: int, name: str, check_range: bool = True) -> None:
    """The signatures' input contract: float [N,3,H,W] in [0, 1], at least ``min_size`` pixels a
    side. Each violation gets an error that says what to do about it."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [N,3,H,W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape [N,3,H,W], got shape {tuple(images.shape)}")
    if images.shape[1] != 3:
        hint = " (channels last? use images.permute(0, 3, 1, 2))" if images.shape[-1] == 3 else ""
        raise ValueError(f"images must have 3 channels in dim 1, got shape {tuple(images.shape)}{hint}")
    if not images.is_floating_point():
        raise TypeError(f"images must be float in [0, 1], got dtype {images.dtype}"
                        " (for 8-bit images use images.float() / 255)")
    if min(images.shape[-2:]) < min_size:
        raise ValueError(f"{name} needs images of at least {min_size}x{min_size} pixels, "
                         f"got {images.shape[-2]}x{images.shape[-1]}")
    if check_range and images.numel():
        low, high = torch.aminmax(images.detach())
        low, high = float(low), float(high)
        if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
            raise ValueError(
                f"images must have values in [0, 1] (the model rescales them itself), got values in "
                f"[{low:.3g}, {high:.3g}]; divide 8-bit images by 255, undo a [-1, 1] scaling, "
                "or set model.check_input_range = False")


def _conv0_size(n: int) -> int:
    return (n - 3) // 2 + 1  # 3x3, stride 2, VALID


def _halve(n: int) -> int:
    return -(-n // 2)  # SAME, stride 2


class AuxHead(nn.Module):
    """TF-Slim ``_build_aux_head`` (scope ``aux_{cell}/aux_logits``): ReLU'd cell output -> 5x5/3
    VALID average pool -> 1x1 conv 128 (``proj``) -> BN -> ReLU -> conv over the whole remaining map
    (``Conv``, VALID, 768) -> BN -> ReLU -> ``FC``. The second conv's kernel equals the map size at
    the image size the model is built for, so the head works only at that size. Bounded: ReLU6."""

    def __init__(self, in_channels: int, map_size: int, num_classes: int, bounded: bool = False):
        super().__init__()
        self.bounded = bounded
        self.kernel = (map_size - 5) // 3 + 1
        if self.kernel < 1:
            raise ValueError(f"the aux head needs a feature map of at least 5x5, got {map_size}x{map_size}")
        self.proj = nn.Conv2d(in_channels, 128, 1, bias=False)
        self.aux_bn0 = batch_norm(128)
        self.Conv = nn.Conv2d(128, 768, self.kernel, bias=False)
        self.aux_bn1 = batch_norm(768)
        self.FC = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) >= 5:
            x = F.avg_pool2d(x, 5, 3)
        if tuple(x.shape[-2:]) != (self.kernel, self.kernel):
            raise ValueError(
                f"the aux head was built for a {self.kernel}x{self.kernel} map after pooling "
                f"(the model's image size) but got {tuple(x.shape[-2:])}; use the expected image size "
                "or build the model without the aux head")
        x = activation(self.aux_bn0(self.proj(x)), self.bounded)
        x = activation(self.aux_bn1(self.Conv(x)), self.bounded)
        return self.FC(torch.flatten(x, 1))


class FinalLayer(nn.Module):
    """TF scope ``final_layer``: dropout then ``FC`` (absent in a feature-vector model)."""

    def __init__(self, in_features: int, num_classes: int, dropout_keep_prob: float):
        super().__init__()
        self.dropout = nn.Dropout(p=1.0 - dropout_keep_prob)
        self.FC = nn.Linear(in_features, num_classes) if num_classes else None

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.FC is None:
            raise RuntimeError("this is a feature-vector model: it has no final layer; use features()")
        return self.FC(self.dropout(pooled))


class PNASNet(nn.Module):
    """PNASNet-5 with TF-Slim's exact function and the TF-Hub image signatures.

    Args:
        config: ``LARGE``, ``MOBILE`` or a reduced configuration.
        num_classes: 1001 for the ImageNet checkpoints (0 = background); 0 builds a feature-vector
            model without the final layer.
        aux_head: build the auxiliary classifier (used only in training; off by default, and absent
            from the released checkpoints).
        batch_norm_decay: moving-average decay of batch norm in TF's terms (TF-Hub v3 default 0.99,
            i.e. PyTorch momentum 0.01).
        drop_path_keep_prob / dropout_keep_prob: override the configuration's training-time values.
        bounded_activation: TF-Slim's ``use_bounded_activation``: ReLU6 everywhere, branch outputs
            clipped to [-6, 6], a ReLU6 after each block's sum. None takes the configuration's
            (False for Large and Mobile, whose published weights were trained with ReLU); it is
            recorded in ``config.use_bounded_activation``.
    """

    def __init__(self, config: PNASNetConfig = LARGE, num_classes: int = 1001, aux_head: bool = False,
                 batch_norm_decay: float = DEFAULT_BN_DECAY, drop_path_keep_prob: float | None = None,
                 dropout_keep_prob: float | None = None, bounded_activation: bool | None = None):
        super().__init__()
        if bounded_activation is not None:
            config = replace(config, use_bounded_activation=bool(bounded_activation))
        if drop_path_keep_prob is not None:
            config = replace(config, drop_path_keep_prob=drop_path_keep_prob)
        if dropout_keep_prob is not None:
            config = replace(config, dense_dropout_keep_prob=dropout_keep_prob)
        self.config = config
        self.num_classes = num_classes
        self.check_input_range = True
        bounded = self.bounded_activation

        stem_filters = int(32 * config.stem_multiplier)
        self.conv0 = nn.Conv2d(3, stem_filters, 3, stride=2, bias=False)  # VALID padding
        self.conv0_bn = batch_norm(stem_filters)

        total_cells = config.num_cells + 2  # drop path counts the two stem cells too

        def keep_prob(cell_number: int) -> float:
            return 1.0 - (cell_number + 1) / total_cells * (1.0 - config.drop_path_keep_prob)

        rate = config.filter_scaling_rate
        # (channels, stride of the layer that made it) of the last two outputs.
        outputs = [(None, None), (stem_filters, 2)]
        scaling = 1.0 / rate ** 2
        self.cell_names: list[str] = []
        for i in range(2):
            name = f"cell_stem_{i}"
            cell = PNASNetCell(outputs[-1][0], outputs[-2][0], int(config.num_conv_filters * scaling),
                               2, prev_is_larger=i > 0, drop_path_keep_prob=keep_prob(i), bounded=bounded)
            self.add_module(name, cell)
            self.cell_names.append(name)
            outputs.append((cell.out_channels, 2))
            scaling *= rate

        reductions = config.reduction_indices()
        self.aux_cell = config.aux_cell_index() if aux_head and num_classes else None
        scaling = 1.0
        map_size = _halve(_halve(_conv0_size(config.image_size)))
        for i in range(config.num_cells):
            stride = 2 if i in reductions else 1
            if stride == 2:
                scaling *= rate
                map_size = _halve(map_size)
            name = f"cell_{i}"
            cell = PNASNetCell(outputs[-1][0], outputs[-2][0], int(config.num_conv_filters * scaling),
                               stride, prev_is_larger=outputs[-1][1] == 2,
                               drop_path_keep_prob=keep_prob(i + 2), bounded=bounded)
            self.add_module(name, cell)
            self.cell_names.append(name)
            outputs.append((cell.out_channels, stride))
            if i == self.aux_cell:
                aux = nn.Module()
                aux.aux_logits = AuxHead(cell.out_channels, map_size, num_classes, bounded)
                self.add_module(f"aux_{i}", aux)

        self.num_features = outputs[-1][0]
        self.final_layer = FinalLayer(self.num_features, num_classes, config.dense_dropout_keep_prob)
        self.set_batch_norm_decay(batch_norm_decay)
        self._init_weights()

    # ----------------------------------------------------------------------------- properties
    @property
    def bounded_activation(self) -> bool:
        """ReLU6 and clipped branch outputs (TF-Slim's ``use_bounded_activation``)."""
        return self.config.use_bounded_activation

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """The ReLU (ReLU6 when bounded) that the final layer and the aux head apply to a cell output."""
        return activation(x, self.config.use_bounded_activation)

    @property
    def expected_image_size(self) -> tuple[int, int]:
        """(height, width) the variant was trained at: 331 Large, 224 Mobile."""
        return (self.config.image_size, self.config.image_size)

    @property
    def min_image_size(self) -> int:
        """Smallest side the network is defined for: every stride-2 cell must see at least 2
        pixels, or TF-Slim would treat the two-back input differently (it compares widths)."""
        n = 3
        while True:
            stride2_inputs = [_conv0_size(n)]  # cell_stem_0, cell_stem_1, then each reduction cell
            for _ in range(1 + len(self.config.reduction_indices())):
                stride2_inputs.append(_halve(stride2_inputs[-1]))
            if min(stride2_inputs) >= 2:
                return n
            n += 1

    @property
    def endpoint_names(self) -> list[str]:
        cells = [f"Cell_{i}" for i in range(self.config.num_cells)]
        return ["Stem", *cells, "global_pool"] + (["Logits"] if self.num_classes else [])

    # ----------------------------------------------------------------------------- set-up
    def _init_weights(self) -> None:
        # TF-Slim: variance scaling, fan-out, factor 2 (He); BN gamma 1, beta 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
                nn.init.zeros_(m.bias)

    def batch_norms(self) -> Iterator[nn.BatchNorm2d]:
        return (m for m in self.modules() if isinstance(m, nn.BatchNorm2d))

    def set_batch_norm_decay(self, decay: float) -> None:
        """Moving-average decay in TF's terms (0.99 = PyTorch momentum 0.01)."""
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"batch_norm_decay must be in [0, 1], got {decay}")
        for bn in self.batch_norms():
            bn.momentum = 1.0 - decay

    @contextlib.contextmanager
    def batch_norm_decay(self, decay: float | None):
        """Use another decay for the calls inside the block only (TF-Hub ``*_with_bn_hparams``)."""
        if decay is None:
            yield
            return
        saved = [(bn, bn.momentum) for bn in self.batch_norms()]
        try:
            self.set_batch_norm_decay(decay)
            yield
        finally:
            for bn, momentum in saved:
                bn.momentum = momentum

    def set_drop_path_progress(self, fraction: float) -> None:
        """Position on TF's drop-path ramp, ``min(1, step / total_training_steps)``. The default 1.0
        holds every cell at its final keep probability, which is what TF-Hub fine-tuning does; call
        this every step to reproduce TF-Slim's schedule when training from scratch."""
        fraction = min(1.0, max(0.0, float(fraction)))
        for name in self.cell_names:
            self._modules[name].drop_path_progress = fraction

    # ----------------------------------------------------------------------------- forward
    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, min_size=self.min_image_size, name=self.config.name,
                     check_range=self.check_input_range)
        images = images.to(self.conv0.weight.dtype)
        # TF-Slim inception preprocessing: (x - 0.5) * 2 maps [0, 1] to [-1, 1].
        return (images - 0.5) * 2.0

    def _endpoints(self, images: torch.Tensor, stop_at: str) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) for each end point in order, computing nothing after ``stop_at``."""
        x = self.conv0_bn(self.conv0(self._prepare(images)))  # no ReLU: each consumer applies its own
        prev, current = None, x
        for name in self.cell_names:
            prev, current = current, self._modules[name](current, prev)
            if name == "cell_stem_1":
                endpoint = "Stem"
            elif name.startswith("cell_stem"):
                continue
            else:
                endpoint = "Cell_" + name.split("_")[1]
            yield endpoint, current
            if endpoint == stop_at:
                return
        pooled = self.activation(current).mean(dim=(2, 3))
        yield "global_pool", pooled
        if stop_at == "Logits":
            yield "Logits", self.final_layer(pooled)

    def forward_endpoints(self, images: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Named intermediate outputs as TF-Slim's end points (``Stem``, ``Cell_0`` ...,
        ``global_pool``, ``Logits``), cell outputs as [N,C,H,W] before any ReLU. Computes no further
        than the last one asked for, so a backbone up to ``Cell_7`` costs only that much."""
        names = list(names)
        order = self.endpoint_names
        unknown = [n for n in names if n not in order]
        if unknown or not names:
            raise ValueError(f"unknown end point(s) {unknown or names}; this model has {order}")
        last = max(names, key=order.index)
        return {name: t for name, t in self._endpoints(images, last) if name in names}

    def _logits_and_aux(self, images: torch.Tensor, with_aux: bool = False):
        aux_logits = None
        last_cell = f"Cell_{self.config.num_cells - 1}"
        aux_at = f"Cell_{self.aux_cell}" if with_aux else None
        for name, t in self._endpoints(images, last_cell):
            if name == aux_at:
                aux_logits = self._modules[f"aux_{self.aux_cell}"].aux_logits(self.activation(t))
        pooled = self.activation(t).mean(dim=(2, 3))
        return pooled, aux_logits

    def features(self, images: torch.Tensor, *, batch_norm_decay: float | None = None) -> torch.Tensor:
        """Image feature vector: ReLU of the last cell, averaged over H and W -> [N, num_features].
        No dropout (the TF-Hub contract leaves that to the consumer)."""
        with self.batch_norm_decay(batch_norm_decay):
            pooled, _ = self._logits_and_aux(images)
        return pooled

    def classify(self, images: torch.Tensor, *, batch_norm_decay: float | None = None,
                 with_aux: bool = False):
        """Image classification logits [N, num_classes] (index 0 = background for 1001 classes).
        With ``with_aux=True`` (training mode, model built with ``aux_head=True``) returns
        ``(logits, aux_logits)``."""
        if self.final_layer.FC is None:
            raise RuntimeError("this is a feature-vector model (num_classes=0): use features()")
        if with_aux and (self.aux_cell is None or not self.training):
            raise RuntimeError("aux logits exist only in training mode of a model built with aux_head=True")
        with self.batch_norm_decay(batch_norm_decay):
            pooled, aux_logits = self._logits_and_aux(images, with_aux)
            logits = self.final_layer(pooled)
        return (logits, aux_logits) if with_aux else logits

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, logits)`` of the same pass: what :meth:`features` and :meth:`classify` return,
        for the price of one."""
        if self.final_layer.FC is None:
            raise RuntimeError("this is a feature-vector model (num_classes=0): use features()")
        pooled, _ = self._logits_and_aux(images)
        return pooled, self.final_layer(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits, or the feature vector for a feature-vector model."""
        if self.final_layer.FC is None:
            return self.features(images)
        return self.classify(images)
