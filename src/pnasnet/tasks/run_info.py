"""What produced a set of feature vectors: recorded in every output, compared before resuming.

Two runs may share an output only if their vectors are interchangeable: same model variant, same
parameters, same preprocessing and image size. The parameters are identified by a SHA-256 of the
model's state dict (names, dtypes, shapes and bytes) rather than by the weights file, so the check
holds for every weights format, for a moved or renamed file and for seeded random weights alike.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields

from ..model.fingerprint import parameters_sha256

__all__ = ["RunInfo", "OutputMismatchError", "parameters_sha256"]


class OutputMismatchError(ValueError):
    """An existing output was made by another model, weights or preprocessing."""


@dataclass(frozen=True)
class RunInfo:
    """Metadata of a features output. Fields in :attr:`IDENTITY` must match to resume."""

    model: str
    weights: str                 # as the user named it, or "random initialisation (seed N)"
    parameters_sha256: str
    transform: str               # "tf-slim" or "resize"
    image_size: int
    num_features: int
    pnasnet_version: str
    # bfloat16 vectors differ from float32 ones by ~1e-2 relative: never mixed in one output. The
    # float32 back ends agree to ~1e-6, so which of them ran is not part of the identity. Outputs
    # written before this field existed were float32.
    precision: str = "float32"
    # Which back end computed the vectors, e.g. "openvino float32" (a file output: the last run that
    # added to it; a Parquet folder written on Ray: in each part, what the run that wrote it asked
    # each actor for); not identity, for the reason above. "" where it was not recorded.
    backend: str = ""
    # TF-Slim's use_bounded_activation (ReLU6): the same parameters compute another function, so it
    # is identity. Outputs written before this field existed were made without it.
    bounded_activation: bool = False

    IDENTITY = ("model", "parameters_sha256", "transform", "image_size", "num_features", "precision",
                "bounded_activation")

    @classmethod
    def for_model(cls, model, *, model_name: str | None, weights: str | None, transform: str, image_size: int,
                  precision: str, backend: str = "") -> "RunInfo":
        """What a features run of ``model`` records (the model's own facts filled in here)."""
        from ..version import __version__

        return cls(model=model_name or model.config.name, weights=weights or "not recorded",
                   parameters_sha256=parameters_sha256(model), transform=transform, image_size=image_size,
                   num_features=model.num_features, pnasnet_version=__version__, precision=precision,
                   backend=backend, bounded_activation=bool(model.config.use_bounded_activation))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "RunInfo":
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        missing = {f.name for f in fields(cls) if f.default is MISSING} - set(data)
        if missing:
            raise ValueError(f"run metadata lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def check_same_as(self, earlier: "RunInfo", where: str) -> None:
        """Raise :class:`OutputMismatchError` naming each difference from ``earlier``."""
        diffs = [f"{name}: {getattr(earlier, name)!r} there, {getattr(self, name)!r} now"
                 for name in self.IDENTITY if getattr(earlier, name) != getattr(self, name)]
        if diffs:
            detail = "; ".join(d if not d.startswith("parameters_sha256") else
                               f"parameters_sha256 (the weights): {earlier.weights!r} there, {self.weights!r} now"
                               for d in diffs)
            raise OutputMismatchError(
                f"{where} was made by another run ({detail}); its vectors cannot be mixed with this "
                "run's. Choose another output, or pass overwrite=True (--overwrite) to start over.")
