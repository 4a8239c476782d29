#!/usr/bin/env python3
"""Make TF1 Hub-format module fixtures of the tiny PNASNet with TensorFlow Hub itself.

What this script makes
----------------------
From the TF-Slim reference checkpoint ``tests/fixtures/tf_slim/mobile_tiny/``
(made by ``tools/make_tf_slim_fixtures.py``: a reduced PNASNet-5 Mobile,
num_cells=3, F=10, stem_multiplier 0.25, 11 classes) it exports two modules in
the TF1 Hub format, shaped like Google's
``google/imagenet/pnasnet_large/{classification,feature_vector}``:

* ``classification``: signatures ``default`` and ``image_classification``
  (logits ``[None, 11]``) and ``image_feature_vector`` (the ``global_pool``
  end point ``[None, 200]``);
* ``feature_vector``: built with ``num_classes=0``, so it has no
  ``final_layer/FC`` variables; signatures ``default`` and
  ``image_feature_vector`` (``[None, 200]``).

Every signature takes one input ``images``: float32 ``[None, 48, 48, 3]``, RGB
in [0, 1]; the module itself maps it to [-1, 1] with ``(x - 0.5) * 2`` (the
TF-Hub common image-input convention, as in Google's modules).  The
``image_feature_vector`` signatures also output the cell end points under
their TF-Slim end-point names (``Stem``, ``Cell_0`` ...) next to ``default``
(Google's modules expose intermediate activations there too; the key names
here are our own choice).  An ``ImageModuleInfo`` (default image size 48x48) is
attached.  Both modules have the inference graph (tags ``set()``,
``is_training=False``); ``classification`` also has a ``{"train"}`` variant like
Google's modules (``is_training=True``: batch norm on batch statistics, dropout
0.5; no aux head, so both variants have the same variables), which gives its
``saved_model.pb`` two meta graphs.  ``feature_vector`` leaves it out: it costs
about 95 KB of compressed tarball, and one single-meta-graph module is worth
testing too.

The graph is built by TF-Slim's own ``pnasnet.build_pnasnet_mobile`` under
``pnasnet_mobile_arg_scope()`` (imported with the ``tensorflow.contrib`` shim of
``make_tf_slim_fixtures.py``) inside ``hub.create_module_spec(module_fn)``; the
variables of a ``hub.Module(spec)`` are initialised from the checkpoint with
``tf.compat.v1.train.init_from_checkpoint`` and written by
``module.export(path, session)``.  Each module folder is packed as a gzip
tarball laid out like tfhub.dev's ``?tf-hub-format=compressed`` downloads (the
module's files at the root), with fixed mtimes / owners so reruns give the same
archive members.

Then every tarball is checked by TensorFlow: unpacked into a fresh folder,
loaded with ``hub.Module`` in a fresh graph and run on ``io.npz``'s
``images_48``; the outputs must match ``eval_logits_48`` /
``eval_global_pool_48`` / ``eval_<cell>_48`` (inference graph) and
``train_global_pool_48`` (``{"train"}`` graph where present; batch statistics over the same 4
images, before dropout) to within 1e-5.  The variable names and values stored
in ``variables/variables.index`` are compared with the TF-Slim checkpoint.  The
results go into ``<out>/README.md``.

Why
---
The PyTorch library reads TF1 Hub modules (saved_model.pb + a TF checkpoint).
Test fixtures for that reader must be made by the real tools, not written by
hand, so that e.g. variable naming inside the module checkpoint, the meta graph
layout and the signatures are what TensorFlow Hub really produces.  Only this
generator needs TensorFlow; nothing in ``src/`` or ``tests/`` imports it.

Requirements (generator only)
-----------------------------
Everything ``tools/make_tf_slim_fixtures.py`` needs (TensorFlow 2.12, tf-slim
1.1.0, NumPy < 1.24, TF-Slim's ``pnasnet.py``/``nasnet.py``/``nasnet_utils.py``
in ``--slim-dir``) plus ``tensorflow-hub`` with the TF1 Hub-format API
(``hub.create_module_spec``, ``hub.Module``), e.g. 0.13.0 (``pip install
--no-deps tensorflow-hub==0.13.0``).

Usage::

    python tools/make_tf_hub_fixtures.py --slim-dir DIR \\
        [--ckpt-dir tests/fixtures/tf_slim/mobile_tiny] [--out tests/fixtures/tf_hub]
"""

import argparse
import copy
import gzip
import importlib.util
import io
import os
import shutil
import sys
import tarfile
import tempfile

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

CONFIG_NAME = "mobile_tiny"
IMAGE_SIZE = 48
CELL_END_POINTS = ("Stem", "Cell_0", "Cell_1", "Cell_2")
TOLERANCE = 1e-5

# name -> number of classes given to the TF-Slim builder (None: the fixture's,
# 11; 0: no FC layer) and whether to add the {"train"} graph variant.
MODULES = {
    "classification": {"num_classes": None, "train_variant": True},
    "feature_vector": {"num_classes": 0, "train_variant": False},
}


def load_slim_tools():
    """Import tools/make_tf_slim_fixtures.py by path (it is not a package)."""
    path = os.path.join(HERE, "make_tf_slim_fixtures.py")
    spec = importlib.util.spec_from_file_location("make_tf_slim_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# Building and exporting
# ---------------------------------------------------------------------------

def make_module_fn(fx, hub, num_classes):
    """module_fn(is_training) building the tiny PNASNet with TF-Slim."""
    tf1 = fx.tf1
    spec = fx.TINY_CONFIGS[CONFIG_NAME]
    builder = getattr(fx.pnasnet, spec["builder"])
    arg_scope = getattr(fx.pnasnet, spec["arg_scope"])

    def module_fn(is_training):
        images = tf1.placeholder(tf1.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3],
                                 name="images")
        net_input = (images - 0.5) * 2.0
        hparams = copy_hparams(fx, spec)
        if is_training:
            # The aux head cannot be built at 48 px (and would add variables
            # the inference graph lacks); dropout stays as configured (0.5).
            hparams.set_hparam("use_aux_head", 0)
        with fx.slim.arg_scope(arg_scope(batch_norm_decay=fx.BN_DECAY_DEFAULT,
                                         batch_norm_epsilon=fx.BN_EPSILON)):
            out, end_points = builder(net_input, num_classes,
                                      is_training=is_training, config=hparams)
        inputs = {"images": images}
        features = {"default": end_points["global_pool"]}
        features.update({name: end_points[name] for name in CELL_END_POINTS})
        if num_classes:
            hub.add_signature("default", inputs, out)
            hub.add_signature("image_classification", inputs, out)
        else:
            hub.add_signature("default", inputs, end_points["global_pool"])
        hub.add_signature("image_feature_vector", inputs, features)
        info = hub.ImageModuleInfo()
        info.default_image_size.height = IMAGE_SIZE
        info.default_image_size.width = IMAGE_SIZE
        hub.attach_image_module_info(info)

    return module_fn


def copy_hparams(fx, spec):
    """The fixture's hparams (base config + overrides), as passed to the builder."""
    hparams = copy.deepcopy(getattr(fx.pnasnet, spec["base_config"])())
    for key, value in spec["overrides"].items():
        hparams.set_hparam(key, value)
    return hparams


def export_module(fx, hub, num_classes, train_variant, ckpt, path):
    """create_module_spec -> hub.Module -> init_from_checkpoint -> export."""
    tf1 = fx.tf1
    module_fn = make_module_fn(fx, hub, num_classes)
    tags_and_args = [(set(), {"is_training": False})]
    if train_variant:
        tags_and_args.append(({"train"}, {"is_training": True}))
    spec = hub.create_module_spec(module_fn, tags_and_args=tags_and_args)
    with tf1.Graph().as_default():
        module = hub.Module(spec)
        assignment = {name: var for name, var in module.variable_map.items()}
        tf1.train.init_from_checkpoint(ckpt, assignment)
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            module.export(path, session)
    return sorted(module.variable_map)


# ---------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------

def pack(folder, tarball):
    """gzip tarball of folder's contents at the archive root, reproducibly."""
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        rel_root = os.path.relpath(root, folder)
        for name in dirs:
            entries.append(os.path.normpath(os.path.join(rel_root, name)))
        for name in sorted(files):
            entries.append(os.path.normpath(os.path.join(rel_root, name)))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(entries):
            full = os.path.join(folder, rel)
            info = tar.gettarinfo(full, arcname=rel)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isdir():
                tar.addfile(info)
            else:
                with open(full, "rb") as handle:
                    tar.addfile(info, handle)
    with open(tarball, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                           compresslevel=9) as gz:
            gz.write(buf.getvalue())
    return sorted(entries)


def unpack(tarball, folder):
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            assert not member.name.startswith(("/", "..")), member.name
        tar.extractall(folder)


# ---------------------------------------------------------------------------
# Checks with TensorFlow
# ---------------------------------------------------------------------------

def check_module(fx, hub, folder, name, num_classes, ref, ckpt):
    """Load the unpacked module in fresh graphs; compare with io.npz + ckpt."""
    tf1 = fx.tf1
    images = ref["images_%d" % IMAGE_SIZE]
    result = {}

    # Inference graph.
    with tf1.Graph().as_default():
        module = hub.Module(folder)
        result["signatures"] = sorted(module.get_signature_names())
        result["tags"] = sorted(sorted(t) for t in hub.load_module_spec(folder).get_tags())
        result["expected_image_size"] = list(hub.get_expected_image_size(module))
        x = tf1.placeholder(tf1.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3])
        fetch = {"default": module(x)}
        feats = module(x, signature="image_feature_vector", as_dict=True)
        fetch["fv_default"] = feats["default"]
        for cell in CELL_END_POINTS:
            fetch[cell] = feats[cell]
        if num_classes:
            fetch["image_classification"] = module(x, signature="image_classification")
        shapes = {k: v.shape.as_list() for k, v in fetch.items()}
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())  # hub: from checkpoint
            out = session.run(fetch, {x: images})
    s = IMAGE_SIZE
    if num_classes:
        pairs = {"default": "eval_logits_%d" % s,
                 "image_classification": "eval_logits_%d" % s}
    else:
        pairs = {"default": "eval_global_pool_%d" % s}
    pairs["fv_default"] = "eval_global_pool_%d" % s
    for cell in CELL_END_POINTS:
        pairs[cell] = "eval_%s_%d" % (cell, s)
    diffs = {}
    for key, ref_key in pairs.items():
        want = ref[ref_key]
        got = out[key][:len(want)]
        assert got.shape == want.shape, (key, got.shape, want.shape)
        diffs["%s vs %s" % (key, ref_key)] = float(np.max(np.abs(got - want)))
    result["shapes"] = shapes

    # {"train"} graph: global pool with batch statistics (before dropout).
    if ["train"] in result["tags"]:
        with tf1.Graph().as_default():
            module = hub.Module(folder, tags={"train"}, trainable=True)
            x = tf1.placeholder(tf1.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3])
            pool = module(x, signature="image_feature_vector", as_dict=True)["default"]
            result["train_graph_update_ops"] = len(
                tf1.get_collection(tf1.GraphKeys.UPDATE_OPS))
            with tf1.Session() as session:
                session.run(tf1.global_variables_initializer())
                got = session.run(pool, {x: images})
        key = "train_global_pool_%d" % s
        diffs["train-graph image_feature_vector vs %s" % key] = float(
            np.max(np.abs(got - ref[key])))
    result["max_abs_diff"] = diffs
    result["ok"] = all(d <= TOLERANCE for d in diffs.values())

    # The module's own checkpoint against the TF-Slim one.
    var_prefix = os.path.join(folder, "variables", "variables")
    stored = dict(fx.tf.train.list_variables(var_prefix))
    source = dict(fx.tf.train.list_variables(ckpt))
    reader = fx.tf.train.load_checkpoint(var_prefix)
    source_reader = fx.tf.train.load_checkpoint(ckpt)
    common = sorted(set(stored) & set(source))
    result["n_variables"] = len(stored)
    result["extra_vs_slim_ckpt"] = sorted(set(stored) - set(source))
    result["missing_vs_slim_ckpt"] = sorted(set(source) - set(stored))
    result["value_max_abs_diff"] = max(
        float(np.max(np.abs(reader.get_tensor(n) - source_reader.get_tensor(n))))
        for n in common)
    result["variable_files_identical_to_slim_ckpt"] = all(
        file_bytes(var_prefix + ext) == file_bytes(ckpt + ext)
        for ext in (".index", ".data-00000-of-00001"))
    result["variable_names"] = sorted(stored)
    result["variable_shapes"] = stored
    result["top_level_scopes"] = sorted({n.split("/")[0] for n in stored})
    result["stored_dtypes"] = sorted({str(v) for v in
                                      reader.get_variable_to_dtype_map().values()})
    return result


def file_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


# ---------------------------------------------------------------------------

def write_readme(path, results, sizes, versions):
    """3-6 lines on what the tarballs are; every claim comes from the checks."""
    cls, fv = results["classification"], results["feature_vector"]
    diffs = [d for r in results.values() for d in r["max_abs_diff"].values()]
    names = [n for r in results.values() for n in r["variable_names"]]
    prefixed = sorted({n.split("/")[0] for n in names if n.startswith("module/")})
    extra = sorted({n for r in results.values() for n in r["extra_vs_slim_ckpt"]})
    tags = "; ".join("%s: %s" % (name, " + ".join(
        "{%s}" % ", ".join('"%s"' % t for t in tag) for tag in r["tags"]))
        for name, r in results.items())
    entries = sorted({e for r in results.values() for e in r["tar_entries"]})
    lines = [
        "# TF1 Hub-format fixtures (made by `tools/make_tf_hub_fixtures.py`)",
        "",
        "- `mobile_tiny_classification.tar.gz` (%d bytes) and `mobile_tiny_feature_vector.tar.gz` "
        "(%d bytes): the `tf_slim/mobile_tiny` PNASNet-5 Mobile (3 cells, F=10, 11 classes) as "
        "TF1 Hub modules shaped like `google/imagenet/pnasnet_large/{classification,"
        "feature_vector}`, packed like tfhub.dev's `?tf-hub-format=compressed` (entries at the "
        "root: %s)."
        % (sizes["classification"], sizes["feature_vector"],
           ", ".join("`%s/`" % e if "." not in e else "`%s`" % e for e in entries)),
        "- Made by TF-Slim's `build_pnasnet_mobile` (is_training=False) inside "
        "`hub.create_module_spec` -> `hub.Module` -> `init_from_checkpoint(tf_slim/mobile_tiny/"
        "model.ckpt)` -> `Module.export` (TensorFlow %s, tensorflow_hub %s, tf_slim %s). Input "
        "`images` float32 [None, 48, 48, 3] in [0, 1], mapped to (x - 0.5) * 2 inside. "
        "Graph variants: %s. Signatures: classification %s (logits [None, 11]; "
        "`image_feature_vector` = global pool [None, 200]); feature_vector %s "
        "([None, 200]); `image_feature_vector` also outputs %s."
        % (versions["tensorflow"], versions["tensorflow_hub"], versions["tf_slim"], tags,
           "/".join(cls["signatures"]), "/".join(fv["signatures"]),
           "/".join("`%s`" % c for c in CELL_END_POINTS)),
        "- `variables/variables.index` holds %s, top-level scopes %s: %d variables "
        "(classification) and %d (feature_vector, no `final_layer/FC/*`); extra vs the TF-Slim "
        "checkpoint: %s; values identical to it (max abs diff %g)%s."
        % ("prefixed names (%s)" % ", ".join(prefixed) if prefixed else
           "bare TF-Slim names (no `module/` prefix)",
           ", ".join("`%s`" % t for t in cls["top_level_scopes"]),
           cls["n_variables"], fv["n_variables"],
           ", ".join(extra) if extra else "none (no `global_step`)",
           max(cls["value_max_abs_diff"], fv["value_max_abs_diff"]),
           "; classification's `variables/*` are byte-identical to `model.ckpt.*`"
           if cls["variable_files_identical_to_slim_ckpt"] else ""),
        "- TF self-check: each tarball, unpacked and loaded with `hub.Module` in a fresh graph, "
        "reproduces `tf_slim/mobile_tiny/io.npz` on `images_48` (eval logits, global pool, cell "
        "end points; the {\"train\"} variant against `train_global_pool_48`): max abs diff %.3g "
        "(tolerance %g)." % (max(diffs), TOLERANCE),
    ]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slim-dir", required=True,
                        help="folder holding TF-Slim's pnasnet.py, nasnet.py, nasnet_utils.py")
    parser.add_argument("--ckpt-dir", default=os.path.join(
        REPO, "tests", "fixtures", "tf_slim", CONFIG_NAME))
    parser.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "tf_hub"))
    parser.add_argument("--keep-dir", default=None,
                        help="also leave the exported module folders here")
    args = parser.parse_args(argv)

    import tensorflow_hub as hub
    fx = load_slim_tools()
    fx.import_slim(args.slim_dir)
    import tf_slim
    versions = {"tensorflow": fx.tf.__version__, "tensorflow_hub": hub.__version__,
                "tf_slim": getattr(tf_slim, "__version__", "1.1.0")}
    print("TF %(tensorflow)s, tensorflow_hub %(tensorflow_hub)s" % versions, flush=True)

    ckpt = os.path.join(args.ckpt_dir, "model.ckpt")
    ref = dict(np.load(os.path.join(args.ckpt_dir, "io.npz")))
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="tf_hub_fixtures_")
    results, sizes = {}, {}
    try:
        for name, module_cfg in MODULES.items():
            num_classes = module_cfg["num_classes"]
            if num_classes is None:
                num_classes = fx.TINY_CONFIGS[CONFIG_NAME]["num_classes"]
            print("== %s (num_classes=%d)" % (name, num_classes), flush=True)
            export_dir = os.path.join(work, name)
            names = export_module(fx, hub, num_classes, module_cfg["train_variant"],
                                  ckpt, export_dir)
            if args.keep_dir:
                shutil.copytree(export_dir, os.path.join(args.keep_dir, name),
                                dirs_exist_ok=True)
            tarball = os.path.join(args.out, "%s_%s.tar.gz" % (CONFIG_NAME, name))
            entries = pack(export_dir, tarball)
            sizes[name] = os.path.getsize(tarball)
            file_sizes = {e: os.path.getsize(os.path.join(export_dir, e)) for e in entries
                          if os.path.isfile(os.path.join(export_dir, e))}
            unpacked = os.path.join(work, name + "_unpacked")
            unpack(tarball, unpacked)
            res = check_module(fx, hub, unpacked, name, num_classes, ref, ckpt)
            res["tar_entries"] = entries
            res["module_variable_map_keys"] = len(names)
            results[name] = res
            print("  tarball %s: %d bytes; files %s" % (tarball, sizes[name], file_sizes))
            for key, value in res.items():
                if key == "variable_shapes":
                    continue
                if key == "variable_names":
                    print("  variables.index (%d names):" % len(value))
                    for var in value:
                        print("    %s %s" % (var, res["variable_shapes"][var]))
                else:
                    print("  %s: %s" % (key, value))
            if not res["ok"]:
                raise SystemExit("TF self-check failed for %s" % name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_readme(os.path.join(args.out, "README.md"), results, sizes, versions)
    print("wrote %s" % os.path.join(args.out, "README.md"))


if __name__ == "__main__":
    main()
