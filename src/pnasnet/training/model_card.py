"""The model card: ``MODEL_DIR/README.md``, a page a person reads to know what a trained model is
(base model and weights, data, classes, metrics, the command that made it, how to load it).

Everything on it comes from ``config.json`` and ``metrics.json`` of the same directory, so the card
and the machine-readable files never disagree. :func:`equivalent_command` spells a run's settings
as the ``pnasnet train`` command that gives the same model, for runs started from Python.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from typing import Sequence

from .options import TrainOptions

__all__ = ["equivalent_command", "model_card"]

_FLAG_NAMES = {"bfloat16": "--bf16"}
_NO_FLAG = ("aux_loss_weight",)  # settable from Python only
# tests/test_train_reports.py parses the result with the real `pnasnet train` parser


def equivalent_command(image_dir: str | os.PathLike, out: str | os.PathLike, model: str,
                       weights: str | os.PathLike | None, options: TrainOptions, *,
                       model_is_dir: bool = False) -> list[str]:
    """``pnasnet train`` with the flags that reproduce ``options`` (those left at their default
    omitted). ``weights`` None is ``--weights none`` for a variant, nothing for a model directory."""
    command = ["pnasnet", "train", str(image_dir), "--out", str(out), "--model", str(model)]
    if weights is not None:
        command += ["--weights", str(weights)]
    elif not model_is_dir:
        command += ["--weights", "none"]
    defaults = TrainOptions()
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if value == getattr(defaults, f.name) or value is None or f.name in _NO_FLAG:
            continue
        flag = _FLAG_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        if isinstance(value, bool):  # a switch: the bare flag (every switch defaults to off)
            command += [flag] if value else []
        else:
            command += [flag, str(value)]
    return command


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": "---", "r": "---:"}
    escaped = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    return (["| " + " | ".join(header) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
            + ["| " + " | ".join(row) + " |" for row in escaped])


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def model_card(out: str | os.PathLike, config: dict, metrics: dict, *, curves: bool) -> str:
    """The Markdown text of ``MODEL_DIR/README.md``."""
    out = str(out)
    labels: list[str] = config["labels"]
    training: dict = config["training"]
    data: dict = config["data"]
    final: dict = metrics["final"]
    kept: dict = metrics["kept"]
    epochs: list[dict] = metrics["epochs"]
    mode = {"head": "a new final layer trained on the base model's feature vectors (head mode)",
            "full": "the whole network fine-tuned (full mode)"}[config["mode"]]
    name = os.path.basename(os.path.normpath(out)) or out
    lines = [f"# {name}: {len(labels)}-class image classifier", "",
             f"PNASNet-5 ({config['architecture']['name']} configuration) trained by `pnasnet train` "
             f"(pnasnet {config['pnasnet_version']}): {mode}.", ""]

    lines += ["## Base model", "",
              f"- Model: {_code(str(config['base_model']))}, weights: {_code(str(config['base_weights']))}",
              f"- Input: {config['image_size']} x {config['image_size']} px, RGB in [0, 1], "
              f"{_code(config['transform'])} preprocessing (the model rescales the values itself)",
              f"- Output: {len(labels)} logits, in the order of `labels.txt`", ""]

    lines += ["## Data", "",
              f"- Folder: {_code(str(data['image_dir']))}, one sub-folder per class",
              f"- {data['images']} images: {data['train_images']} to train on, {data['validation_images']} to "
              f"validate with; {data['split']}"]
    if data["unreadable"]:
        lines.append(f"- {len(data['unreadable'])} unreadable file(s) left out (listed in `config.json`)")
    if data["ignored_outside_class_folders"]:
        lines.append(f"- {len(data['ignored_outside_class_folders'])} image(s) outside the class folders ignored")
    weights = config.get("class_weights")
    lines += ["", "## Classes", ""]
    header = ["#", "class", "train", "validation"] + (["loss weight"] if weights else [])
    rows = []
    for k, row in enumerate(data["class_balance"]):
        rows.append([k, row["label"], row["train"], row["validation"]]
                    + ([f"{weights[row['label']]:.4g}"] if weights else []))
    lines += _table(header, rows, align="rlrr" + ("r" if weights else ""))
    if weights:
        lines += ["", "Loss weights: `--class-weight balanced`, n_samples / (n_classes x n_class) over the training "
                      "images (scikit-learn's definition)."]
    lines.append("")

    lines += ["## Training", ""]
    settings = [f"{training['epochs']} epochs", f"batch {training['batch_size']}",
                f"SGD learning rate {training['learning_rate']} ({training['lr_schedule']}), momentum "
                f"{training['momentum']}", f"dropout {training['dropout_rate']}",
                f"L2 {training['l2_regularizer']}", f"label smoothing {training['label_smoothing']}",
                f"seed {training['seed']}"]
    if config["mode"] == "full":
        augment = [f"{training['augment']} augmentation"]
        augment += [f"{label} ±{training[key]:g}{unit}" for key, label, unit in
                    (("rotation_range", "rotation", "°"), ("width_shift_range", "width shift", ""),
                     ("height_shift_range", "height shift", ""), ("zoom_range", "zoom", "")) if training[key]]
        settings.append(", ".join(augment))
        settings.append(f"batch norm decay {training['batch_norm_decay']} (freeze: {training['freeze_batch_norm']})")
    lines += ["- " + "; ".join(settings)]
    last = epochs[-1] if epochs else None
    if kept["keep"] == "best":
        lines.append(f"- Kept: the weights of epoch {kept['epoch']} of {len(epochs)}, the best by validation "
                     "accuracy (`--keep best`); the validation accuracy of a chosen epoch is optimistic, as the "
                     "same images chose it")
    else:
        lines.append(f"- Kept: the weights after the last epoch ({kept['epoch']} of {len(epochs)}, `--keep last`)")
    lines.append("")

    lines += ["## Metrics", ""]
    kept_row = next((e for e in epochs if e["epoch"] == kept["epoch"]), None)
    rows = []
    if kept_row is not None and kept_row is not last:
        rows.append([f"kept (epoch {kept_row['epoch']})", _number(kept_row["train_loss"]),
                     _percent(kept_row["train_accuracy"]), _number(kept_row["val_loss"]),
                     _percent(kept_row["val_accuracy"])])
    if last is not None:
        rows.append([f"last (epoch {last['epoch']})" + (", kept" if kept_row is last else ""),
                     _number(last["train_loss"]), _percent(last["train_accuracy"]), _number(last["val_loss"]),
                     _percent(last["val_accuracy"])])
    lines += _table(["epoch", "training loss", "training accuracy", "validation loss", "validation accuracy"], rows)
    images = final["images"]
    lines += ["", f"The kept model on the {final['evaluated_on']} images: accuracy {_percent(final['accuracy'])} "
                  f"({final['correct']} of {images}), loss {_number(final['loss'])}."
              + (" (No validation images: these are the training images, not a measure of generalisation.)"
                 if final["evaluated_on"] != "validation" else ""), ""]
    lines += _table(["class", "precision", "recall", "F1", "images"],
                    [[row["label"], _number(row["precision"], 3), _number(row["recall"], 3), _number(row["f1"], 3),
                      row["support"]] for row in final["per_class"]])
    if len(labels) <= 12:
        matrix = final["confusion_matrix"]["matrix"]
        lines += ["", "Confusion matrix (rows: true class, columns: predicted class):", ""]
        lines += _table(["true \\ predicted", *labels], [[label, *matrix[k]] for k, label in enumerate(labels)])
    lines.append("")
    if curves:
        lines += ["![learning curves](curves.png)", ""]
    lines += ["Per-epoch numbers, the confusion matrix and per-class metrics: `metrics.json`; every setting: "
              "`config.json`.", ""]

    command = config.get("command")
    if command:
        lines += ["## The command that made it", "", "```", shlex.join(command["argv"]), "```", ""]
        if command.get("equivalent"):
            lines += ["(Spelt from the run's settings, those at their defaults left out: it trains the same model.)",
                      ""]

    classify = config["use"]["cli"]
    size = config["image_size"]
    load = f"pnasnet.load_images([\"photo.jpg\"], {size}" + (", transform=\"resize\")" if config["transform"] == "resize"
                                                            else ")")
    lines += ["## Use it", "", "```python", "import pnasnet", "",
              f"model = pnasnet.create_model({out!r})   # model.labels: the class names",
              f"x = {load}   # float [N, 3, {size}, {size}] in [0, 1]",
              "probabilities = model.classify(x).softmax(dim=1)",
              "print(model.labels[int(probabilities[0].argmax())])",
              "```", "", "```", classify.replace("IMAGES...", "photo.jpg ...") + " --top-k 3", "```", ""]
    return "\n".join(lines)
