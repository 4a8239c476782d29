"""Access to the fixtures made by running TF-Slim's own pnasnet.py in TensorFlow
(``tools/make_tf_slim_fixtures.py``): a real TF checkpoint of a reduced configuration, the input
images and TF's outputs. The tests read them with this package's reader; TensorFlow is not needed."""

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from pnasnet.model import PNASNet, PNASNetConfig
from pnasnet.weights import load_weights

FIXTURES = Path(__file__).parent / "fixtures" / "tf_slim"
NAMES = ("large_tiny", "mobile_tiny", "mobile_tiny_bounded")  # the last: use_bounded_activation=True


@lru_cache(maxsize=None)
def fixture_config(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


@lru_cache(maxsize=None)
def fixture_arrays(name: str) -> dict:
    with np.load(FIXTURES / name / "io.npz") as data:
        return {k: data[k] for k in data.files}


def image_sizes(name: str, *, aux_only: bool | None = None) -> list[int]:
    return [s["size"] for s in fixture_config(name)["image_sizes"]
            if aux_only is None or s["aux_only"] == aux_only]


def pnasnet_config(name: str) -> PNASNetConfig:
    """The reduced configuration the fixture was built with, in this package's terms."""
    c = fixture_config(name)
    h = c["hparams_eval_graph"]
    aux_sizes = c["aux_head"]["built_at_sizes"]
    return PNASNetConfig(name, num_cells=h["num_cells"], num_conv_filters=h["num_conv_filters"],
                         stem_multiplier=h["stem_multiplier"],
                         image_size=aux_sizes[0] if aux_sizes else image_sizes(name)[0],
                         drop_path_keep_prob=h["drop_path_keep_prob"],
                         filter_scaling_rate=h["filter_scaling_rate"],
                         num_reduction_layers=h["num_reduction_layers"],
                         dense_dropout_keep_prob=h["dense_dropout_keep_prob"],
                         total_training_steps=h["total_training_steps"],
                         use_bounded_activation=bool(h.get("use_bounded_activation", False)))


def build_fixture_model(name: str, *, weights=None, aux_head: bool = False, **kwargs) -> PNASNet:
    """A model of the fixture's configuration, with ``weights`` (any supported form) loaded."""
    model = PNASNet(pnasnet_config(name), num_classes=fixture_config(name)["num_classes"],
                    aux_head=aux_head, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def images_nchw(name: str, size: int) -> torch.Tensor:
    return torch.from_numpy(fixture_arrays(name)[f"images_{size}"]).permute(0, 3, 1, 2).contiguous()


def to_nchw(array: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor.permute(0, 3, 1, 2) if tensor.dim() == 4 else tensor
