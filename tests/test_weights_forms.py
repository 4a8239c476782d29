"""Every weights form loads into the same model with identical outputs; hostile files are refused."""

import os
import pickle
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pnasnet
from pnasnet.model import LARGE, PNASNet
from pnasnet.weights import WeightsMismatchError
from pnasnet.weights.formats import WeightsFormatError, open_weights
from pnasnet.weights.ours import read_metadata, save_safetensors
from pnasnet.weights.ports import port_name, port_names
from pnasnet.weights.sources import SOURCES, WeightsSourceInfo, fetch

from tf_slim_fixtures import FIXTURES, build_fixture_model, image_sizes, images_nchw, pnasnet_config

DATA = Path(__file__).parent / "data"
MOBILE_TINY = FIXTURES / "mobile_tiny"


def _reference_variables():
    table = {}
    for line in (DATA / "tf-slim-pnasnet-large-variables.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")
            table[name] = tuple(int(d) for d in shape.split("x"))
    return table


def test_port_rename_table_covers_full_size_large():
    """Cadene/timm keys for every variable of TF-Slim's Large graph, one to one, and the shapes the
    ports hold (PyTorch layouts of the TF shapes)."""
    reference = _reference_variables()
    renamed = {name: port_name(name) for name in reference}
    assert None not in renamed.values()
    assert len(set(renamed.values())) == len(reference) == 1179
    with torch.device("meta"):
        model = PNASNet(LARGE)
    ours = port_names(model)
    state = model.state_dict()
    port_shapes = {ours[k]: tuple(state[k].shape) for k in ours}
    for name, shape in reference.items():
        port = renamed[name]
        if len(shape) == 4 and name.endswith("depthwise_weights"):
            expected = (shape[2], 1, shape[0], shape[1])
        elif len(shape) == 4:
            expected = (shape[3], shape[2], shape[0], shape[1])
        elif len(shape) == 2:
            expected = (shape[1], shape[0])
        else:
            expected = shape
        assert port_shapes[port] == expected, name
    # Spot checks written out from the ports' module structure.
    assert port_name("cell_stem_0/comb_iter_0/right/1x1/weights") == "cell_stem_0.comb_iter_0_right.conv.weight"
    assert port_name("cell_5/path2_conv/weights") == "cell_5.conv_prev_1x1.path_2.conv.weight"
    assert port_name("cell_9/comb_iter_1/left/bn_sep_7x7_2/moving_variance") == \
        "cell_9.comb_iter_1_left.bn_sep_2.running_var"
    assert port_name("final_layer/FC/weights") == "last_linear.weight"


@pytest.fixture(scope="module")
def reference_model():
    """The TF-made mobile_tiny checkpoint loaded with the TF reader: the model every form must equal."""
    return build_fixture_model("mobile_tiny", weights=MOBILE_TINY / "model.ckpt")


@pytest.fixture(scope="module")
def images():
    return images_nchw("mobile_tiny", image_sizes("mobile_tiny")[0])


def _forms(tmp_path: Path, model: PNASNet) -> dict[str, Path]:
    """The same weights written in each form a user may have (ports made by renaming)."""
    forms = {}
    forms["checkpoint prefix"] = MOBILE_TINY / "model.ckpt"
    forms["checkpoint .index"] = MOBILE_TINY / "model.ckpt.index"
    folder = tmp_path / "ckpt_folder"
    folder.mkdir()
    for f in MOBILE_TINY.glob("model.ckpt.*"):
        (folder / f.name).write_bytes(f.read_bytes())
    forms["checkpoint folder"] = folder
    tarball = tmp_path / "pnasnet-5_tiny_2017_12_13.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for f in sorted(MOBILE_TINY.glob("model.ckpt.*")):
            tar.add(f, arcname=f"pnasnet-5_tiny_2017_12_13/{f.name}")
    forms["release tarball"] = tarball
    state = model.state_dict()
    port = {p: state[k].clone() for k, p in port_names(model).items()}
    torch.save(port, tmp_path / "cadene.pth")
    forms["cadene .pth"] = tmp_path / "cadene.pth"
    from safetensors.torch import save_file
    timm = {k: v.contiguous() for k, v in port.items()}
    save_file(timm, str(tmp_path / "timm.safetensors"))
    forms["timm .safetensors"] = tmp_path / "timm.safetensors"
    save_safetensors(model, tmp_path / "ours.safetensors", {"variant": "pnasnet5_mobile"})
    forms["pnasnet .safetensors"] = tmp_path / "ours.safetensors"
    return forms


def test_every_form_loads_to_identical_outputs(tmp_path, reference_model, images, monkeypatch):
    monkeypatch.setenv("PNASNET_HOME", str(tmp_path / "cache"))
    with torch.inference_mode():
        expected = reference_model.classify(images)
    for form, path in _forms(tmp_path, reference_model).items():
        model = build_fixture_model("mobile_tiny", weights=path)
        with torch.inference_mode():
            got = model.classify(images)
        assert torch.equal(got, expected), form


def test_convert_each_form_and_create_model_loads_it(tmp_path, reference_model, images, monkeypatch):
    from pnasnet.tasks.convert import convert_weights

    monkeypatch.setenv("PNASNET_HOME", str(tmp_path / "cache"))
    with torch.inference_mode():
        expected = reference_model.features(images)
    for i, (form, path) in enumerate(_forms(tmp_path, reference_model).items()):
        out = tmp_path / f"converted_{i}.safetensors"
        convert_weights(path, out, config=pnasnet_config("mobile_tiny"))
        meta = read_metadata(out)
        assert meta["format"] == "pnasnet" and meta["variant"] == "mobile_tiny", form
        assert meta["num_classes"] == "11" and meta["label_set"] == "custom", form
        assert len(meta["source_sha256"]) == 64
        model = build_fixture_model("mobile_tiny", weights=out)
        with torch.inference_mode():
            assert torch.equal(model.features(images), expected), form


def test_thousand_class_source_gets_an_untrained_background_row_or_stays_1000(tmp_path):
    torch.manual_seed(0)
    model = pnasnet.create_model("pnasnet5_mobile")
    state = model.state_dict()
    port = {p: state[k] for k, p in port_names(model).items()}
    port["last_linear.weight"] = port["last_linear.weight"][1:].clone()
    port["last_linear.bias"] = port["last_linear.bias"][1:].clone()
    torch.save(port, tmp_path / "timm_like.pth")
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        full = model.classify(x)
        padded = pnasnet.create_model("pnasnet5_mobile", weights=tmp_path / "timm_like.pth")
        got = padded.classify(x)
        own = pnasnet.create_model("pnasnet5_mobile", weights=tmp_path / "timm_like.pth", num_classes=1000)
        own_logits = own.classify(x)
    assert padded.weights_report.background_row_added
    # The loaded final layers are the same numbers, bit for bit: row 0 added, nothing else touched.
    fc, padded_fc, own_fc = (m.final_layer.FC for m in (model, padded, own))
    assert torch.equal(padded_fc.weight[1:], fc.weight[1:]) and torch.equal(padded_fc.bias[1:], fc.bias[1:])
    assert torch.all(padded_fc.weight[0] == 0) and padded_fc.bias[0] == -1e4
    assert torch.equal(own_fc.weight, fc.weight[1:]) and torch.equal(own_fc.bias, fc.bias[1:])
    # The logits come from GEMMs of another width (1000 vs 1001 outputs): the CPU's BLAS may block
    # and sum them in another order, so they agree to float32 rounding of a 1056-term dot product,
    # not bit for bit (on an AVX2-only Zen 3 they differed in the last bits). 1e-5 of the largest
    # logit is ~100 ulps: far below any real loading mistake (a shifted row changes logits by O(1)).
    tolerance = 1e-5 * float(full.abs().max())
    assert got.shape == (2, 1001) and torch.allclose(got[:, 1:], full[:, 1:], rtol=0, atol=tolerance)
    assert torch.all(got[:, 0] == -1e4) and torch.all(got.argmax(1) > 0)
    assert own.num_classes == 1000 and torch.allclose(own_logits, full[:, 1:], rtol=0, atol=tolerance)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"conv_0.conv.weight": _RunsCode()}, f)
    with pytest.raises(WeightsFormatError, match=r"evil\.pth: not a loadable PyTorch weights file"):
        open_weights(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned_by_pickle").exists()


def test_hostile_and_broken_tarballs_are_refused(tmp_path, monkeypatch):
    from pnasnet.weights.archive import ArchiveError

    monkeypatch.setenv("PNASNET_HOME", str(tmp_path / "cache"))
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(MOBILE_TINY / "model.ckpt.index", arcname="../escaped.index")
    with pytest.raises(ArchiveError, match=r"\.\./escaped\.index"):
        open_weights(evil)
    assert not (tmp_path / "cache" / "escaped.index").exists() and not (tmp_path / "escaped.index").exists()
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tar:
        info = tarfile.TarInfo("model.ckpt.index")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ArchiveError, match="model.ckpt.index"):
        open_weights(link)
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        for f in sorted(MOBILE_TINY.glob("model.ckpt.*")):
            tar.add(f, arcname=f.name)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="truncated.tar.gz"):
        open_weights(truncated)


def test_wrong_shapes_and_wrong_variant_are_refused_by_name(tmp_path):
    torch.manual_seed(0)
    model = pnasnet.create_model("pnasnet5_mobile")
    state = {k: v for k, v in model.state_dict().items()}
    state["cell_0.conv_1x1.weight"] = torch.zeros(3, 3, 1, 1)
    save_safetensors_raw = tmp_path / "bad.pth"
    torch.save(state, save_safetensors_raw)
    with pytest.raises(WeightsMismatchError, match=r"cell_0/1x1/weights: \(1, 1, 3, 3\) in source, model needs \(1, 1, 135, 54\)"):
        pnasnet.create_model("pnasnet5_mobile", weights=save_safetensors_raw)
    torch.save(model.state_dict(), tmp_path / "mobile.pth")
    with pytest.raises(WeightsFormatError, match="pnasnet5_mobile weights, the model is pnasnet5_large"):
        pnasnet.create_model("pnasnet5_large", weights=tmp_path / "mobile.pth")


def test_unrecognised_folder_says_what_it_found(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "sub").mkdir()
    with pytest.raises(WeightsFormatError, match=r"found: notes.txt, sub/"):
        open_weights(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        pnasnet.create_model("pnasnet5_mobile", weights=tmp_path / "nope" / "model.ckpt")


def test_offline_create_model_fails_fast_with_an_actionable_message(tmp_path):
    env = {**os.environ, "PNASNET_HOME": str(tmp_path), "PNASNET_OFFLINE": "1"}
    code = "import pnasnet; pnasnet.create_model('pnasnet5_large', weights='tf-slim')"
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode != 0 and elapsed < 30
    message = result.stderr
    for url in ("https://storage.googleapis.com/download.tensorflow.org/models/pnasnet-5_large_2017_12_13.tar.gz",
                "https://download.tensorflow.org/models/pnasnet-5_large_2017_12_13.tar.gz"):
        assert url in message
    assert str(tmp_path / "pnasnet-5_large_2017_12_13.tar.gz") in message
    assert "weights=" in message


def test_registry_fetch_checks_the_cadene_hash_prefix(tmp_path):
    payload = tmp_path / "served.pth"
    payload.write_bytes(b"not the published file")
    source = WeightsSourceInfo("cadene", ("pnasnet5_large",), payload.as_uri(), "pnasnet5large-bf079911.pth",
                               "PyTorch state dict, Cadene names", 1001, "test", sha256_prefix="bf079911")
    from pnasnet.weights.download import ChecksumError

    with pytest.raises(ChecksumError, match="bf079911"):
        fetch(source, cache=tmp_path / "cache", progress=False)
    assert {s.name for s in SOURCES} == {"tf-slim", "tf-hub", "timm", "cadene"}


def test_auto_model_takes_its_configuration_from_the_weights(tmp_path, reference_model, images):
    """A reduced TF checkpoint carries its configuration in its variables; a converted file records
    it in its metadata. Both rebuild the same network with create_model('auto')."""
    from pnasnet.cli import main

    auto = pnasnet.create_model("auto", weights=MOBILE_TINY / "model.ckpt")
    assert (auto.config.num_cells, auto.config.num_conv_filters, auto.config.stem_multiplier) == (3, 10, 0.25)
    assert auto.num_classes == 11
    out = tmp_path / "tiny.safetensors"
    assert main(["weights", "convert", str(MOBILE_TINY / "model.ckpt"), "--out", str(out)]) == 0
    again = pnasnet.create_model("auto", weights=out)
    with torch.inference_mode():
        want = reference_model.classify(images)
        assert torch.equal(auto.classify(images), want)
        assert torch.equal(again.classify(images), want)
    large = pnasnet.create_model("auto", weights=FIXTURES / "large_tiny" / "model.ckpt")
    assert large.config.reduction_indices() == [2, 4] and large.num_features == 160
    with pytest.raises(ValueError, match="takes its configuration from the weights"):
        pnasnet.create_model("auto")


def test_inspect_reports_fit_by_name(tmp_path, capsys):
    from pnasnet.cli import main

    assert main(["weights", "inspect", str(MOBILE_TINY / "model.ckpt")]) == 0
    printed = capsys.readouterr().out
    assert "tf-checkpoint, 440 variables" in printed
    assert "does not fit pnasnet5_mobile: 509 missing" in printed
    assert "fits its own configuration (custom)" in printed


HUB = Path(__file__).parent / "fixtures" / "tf_hub"


def test_tf1_hub_modules_load_as_tarball_and_folder(tmp_path, monkeypatch):
    """TF1 hub modules exported by tensorflow_hub (classification with a train graph variant,
    feature_vector without a final layer): each gives TF's outputs for the fixture images."""
    from tf_slim_fixtures import fixture_arrays

    monkeypatch.setenv("PNASNET_HOME", str(tmp_path / "cache"))
    arrays = fixture_arrays("mobile_tiny")
    x = images_nchw("mobile_tiny", 48)
    classification = HUB / "mobile_tiny_classification.tar.gz"
    model = pnasnet.create_model("auto", weights=classification)
    assert model.weights_source["kind"] == "tf-hub-module"
    folder = tmp_path / "module"
    with tarfile.open(classification) as tar:
        tar.extractall(folder, filter="data")
    from_folder = pnasnet.create_model("auto", weights=folder)
    features_only = pnasnet.create_model("auto", weights=HUB / "mobile_tiny_feature_vector.tar.gz")
    assert features_only.num_classes == 0
    with torch.inference_mode():
        for m in (model, from_folder):
            np.testing.assert_allclose(m.classify(x).numpy(), arrays["eval_logits_48"], rtol=0, atol=1e-4 * 6)
        np.testing.assert_allclose(features_only(x).numpy(), arrays["eval_global_pool_48"], rtol=0, atol=1e-4 * 5)
    with pytest.raises(ValueError, match="no final layer"):
        pnasnet.create_model("pnasnet5_mobile", weights=HUB / "mobile_tiny_feature_vector.tar.gz")


def test_loading_skips_random_init_yet_sets_every_value(tmp_path):
    """create_model with weights does not spend time on a random initialisation it overwrites; every
    parameter and buffer still ends up set: from the file, or (an aux head the file lacks) freshly
    initialised, and random initialisation works again afterwards."""
    torch.manual_seed(3)
    source = PNASNet(pnasnet_config("large_tiny"), num_classes=11).eval()
    for bn in source.batch_norms():  # statistics a fresh model would not have
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    path = tmp_path / "m.safetensors"
    save_safetensors(source, path, {})
    want = source.state_dict()
    loaded = pnasnet.create_model("auto", weights=path)
    assert set(loaded.state_dict()) == set(want)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, want[key]), key
    with_aux = pnasnet.create_model("auto", weights=path, aux_head=True)
    assert with_aux.weights_report.left_initialised
    for key, value in with_aux.state_dict().items():
        if key in want:
            assert torch.equal(value, want[key]), key
        elif value.is_floating_point() and key.endswith("weight") and value.dim() > 1:
            # He initialisation: finite, spread out, around zero
            assert torch.isfinite(value).all() and 0 < value.std() < 1 and abs(value.mean()) < 0.05, key
    fresh = PNASNet(pnasnet_config("large_tiny"), num_classes=11)
    assert all(p.std() > 0 for n, p in fresh.named_parameters() if n.endswith("weight") and p.dim() > 1)
