"""Train a classifier on your own images: a new final layer on cached features (``head``) or the
whole network fine-tuned (``full``), from an image folder with one sub-folder per class.

    from pnasnet.training import train
    result = train("my_images/", "my_model/", model="pnasnet5_mobile", weights="tf-slim",
                   mode="head", epochs=30)
    print(result.val_accuracy)
    model = pnasnet.create_model("my_model/")     # model.labels: the class names

Modules: ``options`` (settings and defaults), ``dataset`` (folder scan, checks, hash split),
``augment`` + ``loader`` (training transforms, reproducible batches), ``feature_cache`` (head
mode's features), ``head`` / ``finetune`` (the two trainers), ``objective`` (loss, class weights,
schedule), ``checkpoint`` (save, resume, lock, best epoch), ``report`` (metrics, kept epoch,
confusion matrix, matplotlib curves), ``tensorboard`` (TensorBoard scalars), ``model_card`` (the
model directory's README.md), ``model_dir`` (the output), ``workflow`` (``train``),
``distributed`` (several processes under torchrun: DDP, sharded batches, rank-0 outputs).

Layer: training. It may import tasks, bench, inference, api, weights, data and model; never serve,
engines or cli.
"""

from .dataset import DatasetError, ImageFolder, LabeledImage, scan_image_folder, split_train_validation
from .options import TrainOptions
from .progress import ConsoleReporter, SilentReporter, TrainingInterrupted
from .report import EpochRecord
from .workflow import TrainResult, train

__all__ = ["ConsoleReporter", "DatasetError", "EpochRecord", "ImageFolder", "LabeledImage", "SilentReporter",
           "TrainOptions", "TrainResult", "TrainingInterrupted", "scan_image_folder", "split_train_validation",
           "train"]
