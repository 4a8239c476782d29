#!/usr/bin/env python3
"""Make reference fixtures for the PyTorch PNASNet port by running TF-Slim itself.

What this script makes
----------------------
For each small configuration below it builds PNASNet with TF-Slim's *own*
builders (``pnasnet.build_pnasnet_large`` / ``pnasnet.build_pnasnet_mobile``,
under ``pnasnet_large_arg_scope()`` / ``pnasnet_mobile_arg_scope()``) in real
TensorFlow, gives it random but well-conditioned weights, and writes into
``<out>/<config>/``:

* ``model.ckpt.index`` + ``model.ckpt.data-00000-of-00001`` -- a TF V2
  checkpoint saved with ``tf.compat.v1.train.Saver`` holding every variable of
  the training graph (aux head and drop-path ``global_step`` included when the
  graph has them);
* ``io.npz`` -- input images and the outputs TF computed from them: eval-mode
  logits / global pool / every cell end point, train-mode logits / aux logits /
  global pool / a few cells (drop path and dropout switched off), and one
  moving-statistics update of batch norm (cell end points are kept for the
  first two images only, to keep the file small);
* ``config.json`` -- every hyper-parameter, shape, name and quirk needed to
  interpret the above, plus activation-scale statistics.

Why
---
The PyTorch model has to compute exactly the function TF-Slim computes
(TF 'SAME' padding, factorized reduction with odd widths, where ReLUs sit, the
aux head, batch-norm update rule...).  The only trustworthy reference for that
is TF-Slim run by TensorFlow, so the tests compare against numbers produced
here.  The tests themselves only need NumPy: this generator is the only piece
that needs TensorFlow, and nothing in ``src/`` or ``tests/`` imports it.

Why the weights are "calibrated"
--------------------------------
With random weights and random batch-norm statistics the activations of an
inference-mode network grow roughly tenfold per cell, and a comparison of such
numbers says little.  So every batch norm's moving mean / variance is set from
the statistics its input actually has on the fixture images (a training-mode pass
gives a start; then the inference-mode graph is swept batch-norm depth by
depth, which reaches the exact fixed point), and then perturbed (variance x U(0.7, 1.3),
mean + N(0, 0.1) x std) so that inference mode is not trivially equal to
training mode.  Gammas are drawn from U(0.6, 1.4), betas from N(0, 0.2), fully
connected biases from N(0, 0.3).  Convolution kernels keep TF-Slim's own
initialiser (variance scaling, FAN_OUT).

``mobile_tiny_bounded`` is built with ``use_bounded_activation=True`` (ReLU6
everywhere, branch outputs clipped to [-6, 6], ReLU6 after each block's add).
Its gammas are drawn from U(1.5, 4) and its betas from N(0, 1), so that a few
percent of the values reach every ReLU6 and clip beyond +-6; config.json's
``bounded_activation`` reports, per kind of op, the fraction TF actually cut.

Requirements (generator only)
-----------------------------
TensorFlow 2.12 (2.13+ breaks ``tf_slim.batch_norm``), ``tf-slim`` 1.1.0,
NumPy < 1.24, Pillow, optionally scikit-image (its bundled sample photos are
used as test images when it is importable).  The three TF-Slim sources
``pnasnet.py``, ``nasnet.py`` and ``nasnet_utils.py`` from
``tensorflow/models`` ``research/slim/nets/nasnet/`` must be in ``--slim-dir``;
they are imported with ``tensorflow.contrib`` aliased to ``tf_slim``.

Usage::

    python tools/make_tf_slim_fixtures.py --slim-dir DIR --out tests/fixtures/tf_slim \
        [--full-size-out FULL_SIZE_DIR]

``--full-size-out`` additionally writes full-size PNASNet-5 Large (331 px, 1001
classes) and Mobile (224 px) checkpoints with random unit-scale weights and
their eval outputs (for a one-off comparison outside CI; the Large checkpoint is
about 350 MB, so it is not meant to be committed).
"""

import argparse
import copy
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import re
import time

# Plain (non-oneDNN) CPU kernels: the reference numbers should not depend on
# the host's instruction set.  Must be set before TensorFlow is imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

# ---------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------

# Each size entry: image size, number of images, and "aux_only" for a size that
# exists only to exercise the aux head (no cell end points stored there).
TINY_CONFIGS = {
    "large_tiny": {
        "builder": "build_pnasnet_large",
        "arg_scope": "pnasnet_large_arg_scope",
        "base_config": "large_imagenet_config",
        "overrides": {"num_cells": 6, "num_conv_filters": 8,
                      "stem_multiplier": 0.25, "use_aux_head": 1},
        "num_classes": 11,
        "sizes": [
            {"size": 64, "n": 4},
            {"size": 57, "n": 4},
            # The aux head needs a >= 5x5 map after cell 3 (5x5/3 VALID avg
            # pool); 64 and 57 give 4x4, so this third size exists only to
            # exercise the aux head (train-mode outputs, no cell end points).
            {"size": 83, "n": 2, "aux_only": True},
        ],
        "train_cells": ["Stem", "Cell_2", "Cell_5"],
        "bn_update_scopes": ["conv0_bn", "cell_5/beginning_bn"],
        "seed": 1234,
    },
    "mobile_tiny": {
        "builder": "build_pnasnet_mobile",
        "arg_scope": "pnasnet_mobile_arg_scope",
        "base_config": "mobile_imagenet_config",
        "overrides": {"num_cells": 3, "num_conv_filters": 10,
                      "stem_multiplier": 0.25, "use_aux_head": 1},
        "num_classes": 11,
        "sizes": [
            {"size": 48, "n": 4},
            {"size": 51, "n": 4},
        ],
        "train_cells": ["Stem", "Cell_1", "Cell_2"],
        "bn_update_scopes": ["conv0_bn", "cell_stem_1/final_path_bn"],
        "seed": 4321,
    },
}

# use_bounded_activation=True: ReLU6 everywhere, ReLU6 after each block's add,
# branch outputs clipped to [-6, 6].  mobile_tiny plus an aux-only size (cell_1's
# map is 5x5 at 72 px, so the aux head and its ReLU6s exist); batch-norm
# gammas/betas are drawn wider so that many activations pass 6 and every ReLU6
# and clip actually clips (config.json "bounded_activation" gives the fractions).
TINY_CONFIGS["mobile_tiny_bounded"] = dict(
    TINY_CONFIGS["mobile_tiny"],
    overrides=dict(TINY_CONFIGS["mobile_tiny"]["overrides"], use_bounded_activation=True),
    sizes=TINY_CONFIGS["mobile_tiny"]["sizes"] + [{"size": 72, "n": 2, "aux_only": True}],
    gamma_range=(1.5, 4.0),
    beta_std=1.0,
    seed=6666,
)

FULL_CONFIGS = {
    "large_full": {
        "builder": "build_pnasnet_large",
        "arg_scope": "pnasnet_large_arg_scope",
        "base_config": "large_imagenet_config",
        "overrides": {},
        "num_classes": 1001,
        "size": 331,
        "n": 3,
        "cells": ["Stem", "Cell_5", "Cell_11"],
        "seed": 331,
    },
    "mobile_full": {
        "builder": "build_pnasnet_mobile",
        "arg_scope": "pnasnet_mobile_arg_scope",
        "base_config": "mobile_imagenet_config",
        "overrides": {},
        "num_classes": 1001,
        "size": 224,
        "n": 3,
        "cells": ["Stem", "Cell_4", "Cell_8"],
        "seed": 224,
    },
}

BN_EPSILON = 1e-3          # pnasnet_*_arg_scope default
BN_DECAY_DEFAULT = 0.9997  # pnasnet_*_arg_scope default
BN_DECAY_UPDATE = 0.99     # used for the moving-statistics update fixture

GAMMA_RANGE = (0.6, 1.4)
BETA_STD = 0.2
FC_BIAS_STD = 0.3
MOVING_VAR_FACTOR = (0.7, 1.3)
MOVING_MEAN_NOISE = 0.1    # in units of the input's standard deviation
TARGET_LOGIT_STD = 2.0
CELL_IMAGES = 2            # cell end points are stored for the first 2 images

# ---------------------------------------------------------------------------
# Importing TF-Slim's sources with tensorflow.contrib aliased to tf_slim
# ---------------------------------------------------------------------------

tf = None      # the real tensorflow module
tf1 = None     # tensorflow.compat.v1
slim = None    # tf_slim
pnasnet = None
nasnet = None
nasnet_utils = None


def _sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def import_slim(slim_dir):
    """Import pnasnet/nasnet/nasnet_utils from slim_dir; returns source info."""
    global tf, tf1, slim, pnasnet, nasnet, nasnet_utils
    # The import shim is the benchmark worker's (a standard-library-only file), loaded by its path.
    worker_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "src", "pnasnet", "bench",
                               "worker.py")
    spec = importlib.util.spec_from_file_location("pnasnet_bench_worker", worker_path)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    tf, tf1, slim, pnasnet, nasnet, nasnet_utils = worker.import_tf_slim(slim_dir)

    info = {"files": {}}
    for name in ("pnasnet.py", "nasnet.py", "nasnet_utils.py"):
        path = os.path.join(slim_dir, name)
        info["files"][name] = {"sha256": _sha256(path)}
    with open(os.path.join(slim_dir, "nasnet_utils.py")) as handle:
        utils_src = handle.read()
    odd_split = "int(output_filters / 2) + int(output_filters % 2)" in utils_src
    even_assert = "output_filters % 2 == 0" in utils_src
    info["nasnet_utils_factorized_reduction"] = (
        "odd filter counts allowed; path2 gets int(F/2) + F % 2 filters"
        if odd_split and not even_assert else
        "asserts an even filter count (older revision)" if even_assert else
        "unrecognised")
    info["nasnet_utils_has_use_bounded_activation"] = (
        "use_bounded_activation" in utils_src)
    info["nasnet_utils_cell_accepts_current_step"] = "current_step=None):" in utils_src
    return info


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------

def _photo_sources():
    try:
        from skimage import data as skdata  # noqa: WPS433
    except Exception:  # pragma: no cover - optional dependency
        return {}
    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        try:
            out[name] = np.asarray(getattr(skdata, name)())
        except Exception:  # pragma: no cover
            pass
    return out


def _synthetic_shapes(size, rng):
    from PIL import Image, ImageDraw
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, np.pi)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    base = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 8))):
        kind = int(rng.integers(0, 4))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.integers(-size // 4, size, 2)
        w, h = rng.integers(size // 8, size // 2 + 1, 2)
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        if kind == 0:
            draw.rectangle(box, fill=colour)
        elif kind == 1:
            draw.ellipse(box, fill=colour)
        elif kind == 2:
            pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(3)]
            draw.polygon(pts, fill=colour)
        else:
            draw.line(box, fill=colour, width=int(rng.integers(1, 4)))
    return np.asarray(img)


def _synthetic_blocks(size, rng):
    cells = int(rng.integers(3, 7))
    grid = rng.integers(0, 256, (cells, cells, 3)).astype(np.float32)
    idx = (np.arange(size) * cells) // size
    img = grid[idx][:, idx]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    freq = rng.uniform(0.15, 0.6)
    wave = 40.0 * np.sin(freq * xx + 0.5 * freq * yy)[..., None]
    return np.clip(img + wave, 0, 255).astype(np.uint8)


def make_images(size, n, seed, photos):
    """n structured RGB images, float32 NHWC in [0, 1] (multiples of 1/255)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    names = sorted(photos)
    kinds = ["photo", "shapes", "photo", "blocks"] if names else \
        ["shapes", "blocks", "shapes", "blocks"]
    images, described = [], []
    photo_i = int(rng.integers(0, max(len(names), 1)))
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "photo":
            name = names[photo_i % len(names)]
            photo_i += 1
            src = photos[name]
            h, w = src.shape[:2]
            side = int(min(h, w) * rng.uniform(0.6, 1.0))
            y0 = int(rng.integers(0, h - side + 1))
            x0 = int(rng.integers(0, w - side + 1))
            crop = Image.fromarray(src[y0:y0 + side, x0:x0 + side])
            arr = np.asarray(crop.resize((size, size), Image.BICUBIC))
            described.append("skimage.data.%s crop [%d:%d, %d:%d] bicubic->%d"
                             % (name, y0, y0 + side, x0, x0 + side, size))
        elif kind == "shapes":
            arr = _synthetic_shapes(size, rng)
            described.append("synthetic gradient + Pillow shapes")
        else:
            arr = _synthetic_blocks(size, rng)
            described.append("synthetic colour blocks + sinusoid")
        images.append(arr.astype(np.uint8))
    batch = np.stack(images).astype(np.float32) / np.float32(255.0)
    return batch.astype(np.float32), described


def to_network_input(images01):
    """What TF-Slim's preprocessing feeds the network: (x - 0.5) * 2."""
    x = ((images01 - np.float32(0.5)) * np.float32(2.0)).astype(np.float32)
    # The PyTorch model computes x * 2 - 1; in float32 this is bit-identical.
    assert np.array_equal(x, (images01 * np.float32(2.0) - np.float32(1.0)))
    return x


# ---------------------------------------------------------------------------
# One TF graph + session
# ---------------------------------------------------------------------------

def make_hparams(spec, is_training, use_aux_head):
    hp = getattr(pnasnet, spec["base_config"])()
    hp = copy.deepcopy(hp)
    for key, value in spec["overrides"].items():
        hp.set_hparam(key, value)
    if is_training:
        hp.set_hparam("dense_dropout_keep_prob", 1.0)
    if not use_aux_head:
        hp.set_hparam("use_aux_head", 0)
    return hp


class Net(object):
    """A PNASNet built by TF-Slim in its own graph, with a session."""

    def __init__(self, spec, size, is_training, use_aux_head=True,
                 bn_decay=BN_DECAY_DEFAULT, seed=None):
        self.size = size
        self.is_training = is_training
        self.graph = tf1.Graph()
        with self.graph.as_default():
            if seed is not None:
                tf1.set_random_seed(seed)
            self.x = tf1.placeholder(tf1.float32, [None, size, size, 3],
                                     name="images")
            self.hparams = make_hparams(spec, is_training, use_aux_head)
            scope_fn = getattr(pnasnet, spec["arg_scope"])
            builder = getattr(pnasnet, spec["builder"])
            with slim.arg_scope(scope_fn(batch_norm_decay=bn_decay,
                                         batch_norm_epsilon=BN_EPSILON)):
                self.logits, self.end_points = builder(
                    self.x, spec["num_classes"], is_training=is_training,
                    config=self.hparams)
            self.variables = {v.op.name: v for v in tf1.global_variables()}
            self.trainable = [v.op.name for v in tf1.trainable_variables()]
            self._ph, self._assign = {}, {}
            for name, var in self.variables.items():
                ph = tf1.placeholder(var.dtype.base_dtype, var.shape)
                self._ph[name] = ph
                self._assign[name] = tf1.assign(var, ph)
            # Batch norm layers, the statistics of their inputs, and their
            # "depth" (most batch norms on any path from the input, itself
            # included).  Ops are stored in creation order, which is a
            # topological order.
            self.bn_stats, self.bn_depth, depth = {}, {}, {}
            for op in self.graph.get_operations():
                d = max([depth.get(t.op.name, 0) for t in op.inputs] +
                        [depth.get(c.name, 0) for c in op.control_inputs] + [0])
                if op.type.startswith("FusedBatchNorm"):
                    d += 1
                    scope = op.name.rsplit("/", 1)[0]
                    assert scope + "/moving_mean" in self.variables, op.name
                    mean, var = tf1.nn.moments(op.inputs[0], axes=[0, 1, 2])
                    self.bn_stats[scope] = (mean, var)
                    self.bn_depth[scope] = d
                depth[op.name] = d
            self.update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
            self.init = tf1.global_variables_initializer()
            self.saver = tf1.train.Saver(
                var_list=[self.variables[k] for k in sorted(self.variables)],
                write_version=tf1.train.SaverDef.V2, max_to_keep=None)
        config = tf1.ConfigProto(intra_op_parallelism_threads=2,
                                 inter_op_parallelism_threads=1)
        self.sess = tf1.Session(graph=self.graph, config=config)

    def initialise(self):
        self.sess.run(self.init)
        return self.get_values()

    def get_values(self):
        names = sorted(self.variables)
        vals = self.sess.run([self.variables[n] for n in names])
        return dict(zip(names, vals))

    def set_values(self, values, partial=False):
        """Assign variables by name; with partial, names not in values are kept."""
        names = [n for n in self.variables if not partial or n in values]
        feed = {self._ph[name]: values[name] for name in names}
        self.sess.run([self._assign[name] for name in names], feed)

    def run(self, fetches, images01):
        return self.sess.run(fetches, {self.x: to_network_input(images01)})

    def close(self):
        self.sess.close()


def shapes_of(end_points):
    return {k: [None if d is None else int(d) for d in v.shape.as_list()]
            for k, v in end_points.items()}


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------

def randomise_affine(values, rng, gamma_range=GAMMA_RANGE, beta_std=BETA_STD):
    """Random gamma/beta/FC biases; conv kernels keep TF-Slim's initialiser."""
    out = dict(values)
    for name in sorted(values):
        if name.endswith("/gamma"):
            out[name] = rng.uniform(*gamma_range, values[name].shape).astype(np.float32)
        elif name.endswith("/beta"):
            out[name] = (rng.standard_normal(values[name].shape) * beta_std).astype(np.float32)
        elif name.endswith("/biases"):
            out[name] = (rng.standard_normal(values[name].shape) * FC_BIAS_STD).astype(np.float32)
    return out


def pooled(stat_list):
    """Pool per-size {scope: (mean, var)} dicts, equal weight per size.

    A scope missing from some dicts (the aux head exists only in some training
    graphs) is pooled over the dicts that have it.
    """
    out = {}
    for scope in sorted(set().union(*stat_list)):
        have = [s[scope] for s in stat_list if scope in s]
        means = np.stack([m for m, _ in have]).astype(np.float64)
        vars_ = np.stack([v for _, v in have]).astype(np.float64)
        mean = means.mean(0)
        var = (vars_ + means ** 2).mean(0) - mean ** 2
        out[scope] = (mean, np.maximum(var, 1e-8))
    return out


class Perturbation(object):
    """Fixed per-channel factors that make moving stats differ from the truth."""

    def __init__(self, rng):
        self.rng = rng
        self.factors = {}

    def moving_stats(self, scope, mean, var):
        if scope not in self.factors:
            c = mean.shape[0]
            self.factors[scope] = (
                self.rng.standard_normal(c) * MOVING_MEAN_NOISE,
                self.rng.uniform(*MOVING_VAR_FACTOR, c))
        noise, factor = self.factors[scope]
        return ((mean + noise * np.sqrt(var)).astype(np.float32),
                (var * factor).astype(np.float32))


def apply_stats(values, stats, perturb):
    """Write perturbed moving stats; returns (values, largest change).

    The change is measured as |d mean| / sqrt(var + eps) and |d log(var + eps)|,
    i.e. in terms of what the batch norm actually does.
    """
    out = dict(values)
    delta = 0.0
    for scope, (mean, var) in stats.items():
        mm, mv = perturb.moving_stats(scope, mean, var)
        old_m, old_v = out[scope + "/moving_mean"], out[scope + "/moving_variance"]
        delta = max(delta,
                    float(np.max(np.abs(mm - old_m) / np.sqrt(mv + BN_EPSILON))),
                    float(np.max(np.abs(np.log(mv + BN_EPSILON) - np.log(old_v + BN_EPSILON)))))
        out[scope + "/moving_mean"] = mm
        out[scope + "/moving_variance"] = mv
    return out, delta


def _stats(net, images, scopes):
    return dict(zip(scopes, net.run([net.bn_stats[s] for s in scopes], images)))


def calibrate(values, train_nets, eval_nets, perturb, log):
    """Set moving stats to (perturbed) inference-mode statistics of their inputs.

    train_nets / eval_nets: lists of (Net, images01).  A training-mode pass
    gives every batch norm (aux head included) a starting point; then the
    inference-mode graphs are swept depth by depth: the batch norms at depth d
    see only layers of smaller depth, which are final by then, so one sweep
    gives the exact fixed point.  A final full pass measures what is left.
    """
    per_size = []
    for net, images in train_nets:
        net.set_values(values, partial=True)
        per_size.append(_stats(net, images, list(net.bn_stats)))
    values, _ = apply_stats(values, pooled(per_size), perturb)
    depth = eval_nets[0][0].bn_depth
    for net, _ in eval_nets:
        assert net.bn_depth == depth
    max_depth = max(depth.values())
    for d in range(1, max_depth + 1):
        scopes = [s for s in depth if depth[s] == d]
        per_size = []
        for net, images in eval_nets:
            net.set_values(values)
            per_size.append(_stats(net, images, scopes))
        values, _ = apply_stats(values, pooled(per_size), perturb)
    per_size = []
    for net, images in eval_nets:
        net.set_values(values)
        per_size.append(_stats(net, images, list(depth)))
    _, residual = apply_stats(values, pooled(per_size), perturb)
    log("    calibrated %d batch norms in %d depth steps; residual change %.2g"
        % (len(depth), max_depth, residual))
    return values, {"depth_steps": max_depth, "residual_change": residual}


def rescale_fc(values, fc_prefix, logits, target=TARGET_LOGIT_STD):
    """Scale an FC layer's weights so its logits have std ~= target."""
    bias = values[fc_prefix + "/biases"]
    centred = logits - bias
    factor = float(target / max(np.std(centred), 1e-6))
    out = dict(values)
    out[fc_prefix + "/weights"] = (values[fc_prefix + "/weights"] * factor).astype(np.float32)
    return out, factor


# ---------------------------------------------------------------------------
# Statistics for the report
# ---------------------------------------------------------------------------

def write_json(path, obj):
    """Indented JSON with short lists of numbers kept on one line."""
    text = json.dumps(obj, indent=1)
    text = re.sub(r"\[\s*((?:-?[\d.e+-]+|null)(?:,\s*(?:-?[\d.e+-]+|null))*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
                  text)
    with open(path, "w") as handle:
        handle.write(text + "\n")


def clipping_report(net, images01):
    """How much each kind of ReLU6 / clip_by_value of a bounded graph clips on images01.

    Ops are found by type (Relu6) and by the Minimum that tf.clip_by_value
    makes (``.../clip_by_value/Minimum``); their inputs are evaluated and the
    fraction of elements outside [0, 6] (ReLU6) or [-6, 6] (clip) is counted,
    grouped by where the op sits.
    """
    groups = {}
    for op in net.graph.get_operations():
        name = op.name
        if op.type == "Relu6":
            if "/combine/" in name:
                where = "relu6 after the block add (combine)"
            elif name.startswith("final_layer/"):
                where = "relu6 before the global pool (final_layer)"
            elif name.startswith("aux_") or "/" not in name:
                # the aux head's input ReLU6 is built outside its scope
                where = "relu6 before and inside the aux head"
            elif "/left/" in name or "/right/" in name:
                where = "relu6 inside branches (separable convs, max pools, none)"
            else:
                where = "relu6 of cell inputs (1x1, prev_1x1, factorized reduction)"
            kind = "relu6"
        elif op.type == "Minimum" and name.endswith("clip_by_value/Minimum"):
            where, kind = "clip_by_value(-6, 6) of branch outputs", "clip"
        else:
            continue
        groups.setdefault(where, (kind, []))[1].append(op.inputs[0])
    if not groups:
        return None
    fetched = net.run({w: tensors for w, (_, tensors) in groups.items()}, images01)
    report, total, clipped_total = {}, 0, 0
    for where in sorted(groups):
        kind = groups[where][0]
        arrays = [np.asarray(a, np.float64).ravel() for a in fetched[where]]
        x = np.concatenate(arrays)
        above = int((x > 6.0).sum())
        below = int((x < (0.0 if kind == "relu6" else -6.0)).sum())
        entry = {"ops": len(arrays), "elements": int(x.size),
                 "fraction_above_6": above / x.size,
                 ("fraction_below_0" if kind == "relu6" else "fraction_below_-6"): below / x.size,
                 "max_abs_input": float(np.abs(x).max())}
        report[where] = entry
        total += x.size
        clipped_total += above + (below if kind == "clip" else 0)
    report["all ReLU6 and clips: fraction of elements cut at +-6"] = clipped_total / max(total, 1)
    return report


def activation_summary(arrays):
    out = {}
    for key, arr in arrays.items():
        arr = np.asarray(arr, np.float64)
        entry = {"shape": list(arr.shape), "mean": float(arr.mean()),
                 "std": float(arr.std()), "max_abs": float(np.abs(arr).max())}
        if arr.ndim >= 2 and arr.shape[0] > 1:
            per_image = arr.reshape(arr.shape[0], -1)
            spread = per_image - per_image.mean(0, keepdims=True)
            entry["between_image_std"] = float(spread.std())
            entry["min_pairwise_max_abs_diff"] = float(min(
                np.abs(per_image[i] - per_image[j]).max()
                for i in range(len(per_image)) for j in range(i + 1, len(per_image))))
        out[key] = entry
    return out


# ---------------------------------------------------------------------------
# Tiny configurations (committed fixtures)
# ---------------------------------------------------------------------------

def try_train_net(spec, size, bn_decay=BN_DECAY_DEFAULT, seed=None):
    """Training-mode net with the aux head if TF can build it at this size."""
    try:
        return Net(spec, size, True, use_aux_head=True, bn_decay=bn_decay, seed=seed), None
    except ValueError as err:
        reason = str(err).splitlines()[0]
        return Net(spec, size, True, use_aux_head=False, bn_decay=bn_decay, seed=seed), reason


def make_tiny(name, spec, out_root, photos, slim_info, log, skip_aux_size=False):
    t0 = time.time()
    out_dir = os.path.join(out_root, name)
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(spec["seed"])
    entries = [e for e in spec["sizes"] if not (skip_aux_size and e.get("aux_only"))]
    sizes = [entry["size"] for entry in entries]

    images, image_notes = {}, {}
    for i, entry in enumerate(entries):
        images[entry["size"]], image_notes[entry["size"]] = make_images(
            entry["size"], entry["n"], spec["seed"] * 100 + i, photos)

    # Training graphs at every size (aux head where buildable).
    train_nets, aux_reason = {}, {}
    for s in sizes:
        train_nets[s], aux_reason[s] = try_train_net(spec, s)
    aux_sizes = [s for s in sizes if aux_reason[s] is None]
    # The checkpoint comes from the graph with the most variables.
    master_size = max(sizes, key=lambda s: len(train_nets[s].variables))
    # Re-create that graph with a graph-level seed so the init is reproducible.
    train_nets[master_size].close()
    master = Net(spec, master_size, True, use_aux_head=aux_reason[master_size] is None,
                 seed=spec["seed"])
    train_nets[master_size] = master
    gamma_range = tuple(spec.get("gamma_range", GAMMA_RANGE))
    beta_std = spec.get("beta_std", BETA_STD)
    values = randomise_affine(master.initialise(), rng, gamma_range, beta_std)
    for s in sizes:
        assert set(train_nets[s].variables) <= set(master.variables)

    eval_nets = {s: Net(spec, s, False) for s in sizes}
    perturb = Perturbation(rng)
    log("  calibrating batch norm on sizes %s" % sizes)
    values, calib_info = calibrate(
        values,
        train_nets=[(train_nets[s], images[s]) for s in sizes],
        eval_nets=[(eval_nets[s], images[s]) for s in sizes],
        perturb=perturb, log=log)

    # Logit scale: FC weights so that eval logits have std ~2, aux FC so that
    # training-mode aux logits have std ~2.
    s0 = sizes[0]
    eval_nets[s0].set_values(values)
    values, fc_factor = rescale_fc(values, "final_layer/FC",
                                   eval_nets[s0].run(eval_nets[s0].logits, images[s0]))
    aux_scope = None
    aux_fc_factor = None
    aux_vars = sorted(v for v in master.variables if v.startswith("aux_"))
    if aux_vars:
        aux_scope = aux_vars[0].split("/")[0]
        s_aux = aux_sizes[0]
        train_nets[s_aux].set_values(values)
        aux_logits = train_nets[s_aux].run(train_nets[s_aux].end_points["AuxLogits"], images[s_aux])
        values, aux_fc_factor = rescale_fc(values, aux_scope + "/aux_logits/FC", aux_logits)

    # Checkpoint.
    master.set_values(values)
    ckpt = os.path.join(out_dir, "model.ckpt")
    master.saver.save(master.sess, ckpt, write_meta_graph=False, write_state=False)
    for leftover in ("checkpoint",):
        path = os.path.join(out_dir, leftover)
        if os.path.exists(path):
            os.remove(path)

    arrays = {}
    shapes = {"eval": {}, "train": {}}
    stats_arrays = {}
    for i, entry in enumerate(entries):
        s = entry["size"]
        arrays["images_%d" % s] = images[s]
        # Eval mode: logits and global pool for every image; cell end points
        # (first CELL_IMAGES images) except at an aux-only size.
        net = eval_nets[s]
        net.set_values(values)
        cells = [] if entry.get("aux_only") else \
            [k for k in net.end_points if k == "Stem" or k.startswith("Cell_")]
        keys = ["Logits", "global_pool"] + cells
        got = net.run({k: net.end_points[k] for k in keys}, images[s])
        for k in keys:
            key = "eval_%s_%d" % ("logits" if k == "Logits" else k, s)
            stats_arrays[key] = got[k]
            arrays[key] = got[k][:CELL_IMAGES] if k in cells else got[k]
        shapes["eval"][str(s)] = shapes_of(net.end_points)
        # Train mode (drop path keep prob is 1 at global step 0, dropout keep 1):
        # logits, global pool and aux logits everywhere; a few cells at the
        # first size only.
        net = train_nets[s]
        net.set_values(values)
        cells = list(spec["train_cells"]) if i == 0 else []
        keys = ["Logits", "global_pool"] + cells
        if "AuxLogits" in net.end_points:
            keys.append("AuxLogits")
        fetch = {k: net.end_points[k] for k in keys}
        got = net.run(fetch, images[s])
        again = net.run(fetch, images[s])
        for k in keys:
            assert np.array_equal(got[k], again[k]), "train mode is not deterministic"
            key = "train_%s_%d" % ({"Logits": "logits", "AuxLogits": "aux_logits"}.get(k, k), s)
            stats_arrays[key] = got[k]
            arrays[key] = got[k][:CELL_IMAGES] if k in cells else got[k]
        shapes["train"][str(s)] = shapes_of(net.end_points)

    bounded = None
    if eval_nets[s0].hparams.values().get("use_bounded_activation"):
        bounded = {
            "eval_%d" % s0: clipping_report(eval_nets[s0], images[s0]),
            "train_%d" % s0: clipping_report(train_nets[s0], images[s0]),
        }
        if aux_sizes:
            bounded["train_%d" % aux_sizes[0]] = clipping_report(
                train_nets[aux_sizes[0]], images[aux_sizes[0]])
        log("    bounded activations, eval: %s" % json.dumps(bounded["eval_%d" % s0]))

    # Moving-statistics update with decay 0.99, once, on the first size.
    upd = Net(spec, s0, True, use_aux_head=aux_reason[s0] is None, bn_decay=BN_DECAY_UPDATE)
    upd.set_values(values)
    before = upd.get_values()
    upd.run(upd.update_ops, images[s0])
    after = upd.get_values()
    bn_update_keys = {}
    for scope in spec["bn_update_scopes"]:
        prefix = "bn_update_" + scope.replace("/", "__")
        bn_update_keys[prefix] = scope
        for stat in ("moving_mean", "moving_variance"):
            arrays["%s_%s_before" % (prefix, stat)] = before[scope + "/" + stat]
            arrays["%s_%s_after" % (prefix, stat)] = after[scope + "/" + stat]
    # Cross-check TF's update against the textbook rule on the same batch.
    batch = dict(zip(upd.bn_stats, upd.run(list(upd.bn_stats.values()), images[s0])))
    n_per_channel = {}
    update_check = {}
    for scope in spec["bn_update_scopes"]:
        mean, var = batch[scope]
        shape = upd.graph.get_operation_by_name(scope + "/FusedBatchNormV3").inputs[0].shape
        count = images[s0].shape[0] * int(shape[1]) * int(shape[2])
        n_per_channel[scope] = count
        unbiased = var * count / (count - 1.0)
        exp_m = before[scope + "/moving_mean"] * BN_DECAY_UPDATE + mean * (1 - BN_DECAY_UPDATE)
        exp_v = before[scope + "/moving_variance"] * BN_DECAY_UPDATE + unbiased * (1 - BN_DECAY_UPDATE)
        exp_v_biased = before[scope + "/moving_variance"] * BN_DECAY_UPDATE + var * (1 - BN_DECAY_UPDATE)
        update_check[scope] = {
            "elements_per_channel": count,
            "max_abs_err_mean_vs_rule": float(np.abs(after[scope + "/moving_mean"] - exp_m).max()),
            "max_abs_err_var_vs_unbiased_rule": float(np.abs(after[scope + "/moving_variance"] - exp_v).max()),
            "max_abs_err_var_vs_biased_rule": float(np.abs(after[scope + "/moving_variance"] - exp_v_biased).max()),
        }
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    upd.close()

    np.savez_compressed(os.path.join(out_dir, "io.npz"), **arrays)

    # Verify: a fresh eval graph restored from the checkpoint reproduces the logits.
    check = Net(spec, s0, False)
    check.saver.restore(check.sess, ckpt)
    relogits = check.run(check.logits, images[s0])
    assert np.array_equal(relogits, arrays["eval_logits_%d" % s0]), "checkpoint mismatch"
    check.close()
    ckpt_vars = tf.train.list_variables(ckpt)
    ckpt_names = [n for n, _ in ckpt_vars]
    assert sorted(ckpt_names) == sorted(master.variables)

    eval_vars = set(eval_nets[s0].variables)
    extra = sorted(set(ckpt_names) - eval_vars)
    non_model_extra = [n for n in extra if not n.startswith("aux_")]
    hp_train = master.hparams.values()
    hp_eval = eval_nets[s0].hparams.values()
    reduction_indices = nasnet_utils.calc_reduction_layers(
        hp_eval["num_cells"], hp_eval["num_reduction_layers"])
    stride2 = {}
    for s in sizes:
        eps = shapes["eval"][str(s)]
        prev = eps["Stem"][1]
        cells = []
        for c in range(hp_eval["num_cells"]):
            cur = eps["Cell_%d" % c][1]
            if cur != prev:
                cells.append(c)
            prev = cur
        stride2[str(s)] = cells
    n_params = int(sum(int(np.prod(values[n].shape)) for n in master.trainable))

    summary = activation_summary(stats_arrays)
    config = {
        "config": name,
        "description": "TF-Slim PNASNet reference fixture made by tools/make_tf_slim_fixtures.py",
        "builder": "pnasnet." + spec["builder"],
        "arg_scope": "pnasnet.%s(batch_norm_decay=%g, batch_norm_epsilon=%g)" % (
            spec["arg_scope"], BN_DECAY_DEFAULT, BN_EPSILON),
        "base_config": "pnasnet." + spec["base_config"] + "()",
        "overrides": spec["overrides"],
        "num_classes": spec["num_classes"],
        "hparams_eval_graph": hp_eval,
        "hparams_train_graph": hp_train,
        "hparams_notes": [
            "build_pnasnet_* deep-copies the config; nasnet._update_hparams sets "
            "drop_path_keep_prob=1.0 when is_training=False (hparams_eval_graph shows the "
            "config as passed, before that).",
            "Train graphs: dense_dropout_keep_prob=1.0 (dropout is a no-op); "
            "drop_path_keep_prob is left at the config value and the drop-path ramp "
            "is at global step 0, so every drop-path keep probability is exactly 1 "
            "(mask floor(1 + U[0,1)) = 1, x * (1/1) * 1 = x)."
            if hp_train["drop_path_keep_prob"] < 1.0 else
            "Train graphs: dense_dropout_keep_prob=1.0 (dropout is a no-op); "
            "drop_path_keep_prob is 1.0 in this config, so no drop-path ops and no "
            "global_step variable exist.",
        ],
        "batch_norm": {"epsilon": BN_EPSILON, "decay": BN_DECAY_DEFAULT,
                       "scale": True, "center": True, "fused": True,
                       "count": len(eval_nets[s0].bn_stats),
                       "count_train_graph": len(master.bn_stats)},
        "reduction_indices_calc": reduction_indices,
        "stride2_cells_observed": stride2,
        "aux_head": {
            "scope": aux_scope,
            "attached_after_cell": (int(aux_scope.split("_")[1]) if aux_scope else None),
            "built_at_sizes": aux_sizes,
            "not_built_at_sizes": {str(s): aux_reason[s] for s in sizes if aux_reason[s]},
            "variables": aux_vars,
            "note": "Aux head exists only in training graphs. Its 'Conv' kernel equals the "
                    "map size after the 5x5/3 VALID avg pool, so it depends on the input "
                    "size; the checkpoint holds the kernel for the size in built_at_sizes. "
                    "At the other sizes the train graph was built with use_aux_head=0.",
        },
        "image_sizes": [{"size": e["size"], "n_images": e["n"],
                         "aux_only": bool(e.get("aux_only")),
                         "images": image_notes[e["size"]]} for e in entries],
        "cell_end_points_hold_first_n_images": CELL_IMAGES,
        "layout": {
            "arrays": "float32, NHWC exactly as TF gives them (end points [N,H,W,C], "
                      "pooled/logits [N,C])",
            "images": "images_S are [N,S,S,3] RGB in [0,1] (multiples of 1/255); TF was fed "
                      "(x - 0.5) * 2, which is bit-identical in float32 to x * 2 - 1",
            "kernels": "checkpoint kernels are HWIO; depthwise [K,K,C,1]; FC [in,out]",
        },
        "npz_keys": {
            "images_S": "input images",
            "eval_logits_S / eval_global_pool_S": "is_training=False outputs "
                                                  "(global_pool = the 'global_pool' end point)",
            "eval_Stem_S, eval_Cell_k_S": "is_training=False cell end points, every cell, "
                                           "first %d images only; not stored at an aux-only size"
                                           % CELL_IMAGES,
            "train_logits_S / train_global_pool_S / train_aux_logits_S":
                "is_training=True outputs for all images (batch statistics over all N "
                "images of that size, no drop path, no dropout); train_aux_logits_S only "
                "where the aux head is built",
            "train_<Stem|Cell_k>_%d" % s0:
                "is_training=True cell end points at the first size only, first %d images "
                "(computed with the whole batch of %d)" % (CELL_IMAGES, entries[0]["n"]),
            "bn_update_<scope>_moving_{mean,variance}_{before,after}":
                "one run of UPDATE_OPS in a training graph with batch_norm_decay=%g on "
                "images_%d ('/' in the scope written as '__')" % (BN_DECAY_UPDATE, s0),
        },
        "end_point_shapes": shapes,
        "bn_update": {"decay": BN_DECAY_UPDATE, "images": "images_%d" % s0,
                      "scopes": bn_update_keys,
                      "check_against_rule": update_check,
                      "rule": "new = old * decay + batch_stat * (1 - decay); batch variance "
                              "is the unbiased (n/(n-1)) one",
                      "variables_changed_by_update_ops": len(changed)},
        "checkpoint": {
            "files": ["model.ckpt.index", "model.ckpt.data-00000-of-00001"],
            "format": "TF V2, tf.compat.v1.train.Saver, every global variable of the %d px "
                      "training graph" % master_size,
            "num_variables": len(ckpt_names),
            "num_variables_eval_graph": len(eval_vars),
            "extra_vs_eval_graph_non_aux": non_model_extra,
            "extra_vs_eval_graph_aux": [n for n in extra if n.startswith("aux_")],
            "trainable_parameters": n_params,
            "variables": {n: list(map(int, s)) for n, s in ckpt_vars},
            "non_float32_variables": {
                n: master.variables[n].dtype.base_dtype.name for n in ckpt_names
                if master.variables[n].dtype.base_dtype != tf1.float32},
        },
        "weights_recipe": {
            "seed": spec["seed"],
            "conv_kernels": "TF-Slim initialiser (variance_scaling FAN_OUT, truncated normal)",
            "gamma": "U%s" % (gamma_range,), "beta": "N(0, %g)" % beta_std,
            "fc_biases": "N(0, %g)" % FC_BIAS_STD,
            "moving_stats": "fixed point of inference-mode input statistics on the "
                            "calibration images, then variance x U%s and mean + N(0, %g) x std"
                            % (MOVING_VAR_FACTOR, MOVING_MEAN_NOISE),
            "calibration": calib_info,
            "final_fc_weight_scale": fc_factor,
            "aux_fc_weight_scale": aux_fc_factor,
        },
        "activation_stats": summary,
        "bounded_activation": bounded,
        "software": {
            "tensorflow": tf.__version__, "tf_slim": getattr(slim, "__version__", "1.1.0"),
            "numpy": np.__version__, "python": platform.python_version(),
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "tf_slim_sources": slim_info,
        },
    }
    write_json(os.path.join(out_dir, "config.json"), config)
    for net in list(train_nets.values()) + list(eval_nets.values()):
        net.close()
    log("  %s done in %.0f s" % (name, time.time() - t0))
    return config


# ---------------------------------------------------------------------------
# Full-size models (not committed)
# ---------------------------------------------------------------------------

def make_full(name, spec, out_root, photos, slim_info, log):
    t0 = time.time()
    out_dir = os.path.join(out_root, name)
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(spec["seed"])
    s = spec["size"]
    images, notes = make_images(s, spec["n"], spec["seed"], photos)
    master = Net(spec, s, False, seed=spec["seed"])       # eval graph = checkpoint
    values = randomise_affine(master.initialise(), rng)
    train = Net(spec, s, True, use_aux_head=False)
    train.initialise()   # its global_step (drop path ramp at step 0) is not in the checkpoint
    perturb = Perturbation(rng)
    log("  calibrating %s" % name)
    values, calib_info = calibrate(values, [(train, images)], [(master, images)],
                                   perturb, log=log)
    train.close()
    master.set_values(values)
    values, fc_factor = rescale_fc(values, "final_layer/FC",
                                   master.run(master.logits, images))
    master.set_values(values)
    ckpt = os.path.join(out_dir, "model.ckpt")
    master.saver.save(master.sess, ckpt, write_meta_graph=False, write_state=False)
    keys = ["Logits", "global_pool"] + list(spec["cells"])
    got = master.run({k: master.end_points[k] for k in keys}, images)
    arrays = {"images_%d" % s: images}
    for k in keys:
        arrays["eval_%s_%d" % ("logits" if k == "Logits" else k, s)] = got[k]
    np.savez(os.path.join(out_dir, "io.npz"), **arrays)
    config = {
        "config": name, "builder": "pnasnet." + spec["builder"],
        "base_config": "pnasnet." + spec["base_config"] + "() unchanged",
        "num_classes": spec["num_classes"], "image_size": s, "images": notes,
        "checkpoint": "eval-graph variables only (%d), like the released checkpoints"
                      % len(master.variables),
        "trainable_parameters": int(sum(int(np.prod(values[n].shape)) for n in master.trainable)),
        "calibration": calib_info,
        "final_fc_weight_scale": fc_factor,
        "end_point_shapes": shapes_of(master.end_points),
        "activation_stats": activation_summary({k: v for k, v in arrays.items()
                                                if k.startswith("eval_")}),
        "layout": "float32 NHWC; images in [0,1], fed to TF as (x - 0.5) * 2",
        "software": {"tensorflow": tf.__version__, "tf_slim_sources": slim_info},
    }
    write_json(os.path.join(out_dir, "config.json"), config)
    master.close()
    log("  %s done in %.0f s" % (name, time.time() - t0))
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slim-dir", required=True,
                        help="folder holding TF-Slim's pnasnet.py, nasnet.py, nasnet_utils.py")
    parser.add_argument("--out", required=True, help="e.g. tests/fixtures/tf_slim")
    parser.add_argument("--full-size-out", default=None,
                        help="also write full-size Large/Mobile fixtures here (large!)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="restrict to these configuration names")
    parser.add_argument("--skip-aux-size", action="store_true",
                        help="leave out the extra size that exists only for the aux head "
                             "(its 128x768 kernels roughly double the checkpoint)")
    args = parser.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    slim_info = import_slim(args.slim_dir)
    log("TF %s, tf_slim sources: %s" % (tf.__version__, slim_info["nasnet_utils_factorized_reduction"]))
    photos = _photo_sources()
    for name, spec in TINY_CONFIGS.items():
        if args.only and name not in args.only:
            continue
        log("== %s" % name)
        make_tiny(name, spec, args.out, photos, slim_info, log,
                  skip_aux_size=args.skip_aux_size)
    if args.full_size_out:
        for name, spec in FULL_CONFIGS.items():
            if args.only and name not in args.only:
                continue
            log("== %s" % name)
            make_full(name, spec, args.full_size_out, photos, slim_info, log)


if __name__ == "__main__":
    main()
