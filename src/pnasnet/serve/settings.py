"""What a server is asked to do: the model to load and every limit, in one picklable value.

The same settings travel to the inference worker process (which loads the model) and stay in the
HTTP process (which enforces the request limits), so they hold only plain values.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data import DEFAULT_MAX_PIXELS

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    # --- the model (loaded once per inference worker)
    model: str = "pnasnet5_large"       # variant, "auto" (configuration from weights) or a model directory
    # Source name ("tf-slim": the variant's published weights) or local path; None = random weights
    # (testing only), or a model directory's own. `pnasnet serve` passes "tf-slim" unless told
    # otherwise (--weights none: None); in Python, as in create_model, None stays random.
    weights: str | None = None
    # Name clients use in the Open Inference Protocol / TF Serving paths (/v2/models/NAME,
    # /v1/models/NAME:predict); None = the variant's name, or "pnasnet" for "auto" / a model directory.
    model_name: str | None = None
    seed: int = 0                       # seed of the random initialisation (weights None, a variant)
    bounded_activation: bool | None = None  # TF-Slim's ReLU6 form; None: what the weights record
    image_size: int | None = None       # model input side; None = the model's own (331 / 224)
    transform: str = "tf-slim"          # "tf-slim" (published accuracy) or "resize"
    device: str = "auto"                # "auto", "cpu" or "cuda"
    threads: int | None = None          # torch CPU threads in the worker; None = PyTorch's default
    backend: str = "auto"               # how the worker runs the model (pnasnet.inference.for_inference)
    precision: str = "float32"          # "bfloat16" / "int8": reduced precision, explicitly
    calibration: tuple[str, ...] = ()   # int8: images like the ones to be served (files, folders, globs)
    calibration_count: int = 32         # int8: calibration images used, spread over the list
    workers: int = 1                    # inference worker processes (each holds a copy of the model)
    decode_threads: int = 2             # image-decoding threads inside each worker
    # --- network
    host: str = "127.0.0.1"
    port: int = 8000
    # --- dynamic batching
    max_batch_size: int = 8             # requests run together, at most
    max_wait_ms: float = 10.0           # how long the first request of a batch waits for company
    # --- limits
    max_queue: int = 64                 # requests admitted but not answered; beyond it: 503 + Retry-After
    timeout_s: float = 30.0             # per request, from arrival to answer; beyond it: 504
    max_body_bytes: int = 16 * MIB      # request body; beyond it: 413
    max_pixels: int = DEFAULT_MAX_PIXELS  # decoded width x height (decompression bombs); beyond it: 422
    max_files: int = 16                 # images in one multipart request
    max_top_k: int = 100
    api_key: str | None = None          # when set, /v1/* needs "Authorization: Bearer KEY" or "X-API-Key: KEY"
    # --- shutdown
    graceful_timeout_s: float = 30.0    # how long SIGTERM waits for requests in flight
    log_level: str = "info"

    def check(self) -> None:
        """Refuse values that cannot work, naming the option."""
        positive = {"--max-batch-size": self.max_batch_size, "--max-queue": self.max_queue,
                    "--timeout": self.timeout_s, "--max-body-bytes": self.max_body_bytes,
                    "--max-pixels": self.max_pixels, "--max-files": self.max_files,
                    "--workers": self.workers, "--decode-threads": self.decode_threads,
                    "--max-top-k": self.max_top_k}
        for option, value in positive.items():
            if value is None or value <= 0:
                raise ValueError(f"{option} must be positive, got {value}")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.max_wait_ms / 1000 >= self.timeout_s:
            raise ValueError("--max-wait-ms must be shorter than --timeout")
        if self.graceful_timeout_s < 0:
            raise ValueError(f"--graceful-timeout must be >= 0, got {self.graceful_timeout_s}")
        if self.transform not in ("tf-slim", "resize"):
            raise ValueError(f"--transform must be tf-slim or resize, got {self.transform!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        from ..inference import check_backend_choice

        if self.precision == "int8" and not self.calibration:
            raise ValueError("--precision int8 needs --calibration PATH...: images like the ones to be served")
        if self.calibration and self.precision != "int8":
            raise ValueError("--calibration is for --precision int8")
        if self.calibration_count < 1:
            raise ValueError(f"--calibration-count must be positive, got {self.calibration_count}")
        try:
            check_backend_choice(self.backend, self.precision)
        except (ValueError, ImportError) as exc:
            raise ValueError(f"--backend {self.backend} --precision {self.precision}: {exc}") from None
        if self.model_name is not None and (not self.model_name or any(c in self.model_name for c in "/:?#% ")):
            raise ValueError(f"--model-name must be a non-empty name without / : ? # % or spaces, "
                             f"got {self.model_name!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be within 1..65535, got {self.port}")

    def served_name(self) -> str:
        if self.model_name:
            return self.model_name
        from ..api import is_model_dir

        return "pnasnet" if self.model == "auto" or is_model_dir(self.model) else self.model

    def describe_weights(self) -> str:
        from ..api import is_model_dir

        if self.weights is not None:
            return str(self.weights)
        if is_model_dir(self.model):
            return f"model directory {self.model}"
        return f"random initialisation (seed {self.seed})"


def load_model(settings: ServeSettings):
    """The model the settings name, in eval mode on the CPU (the caller moves it and prepares it
    with :func:`prepare_served_model`)."""
    import torch

    from ..api import create_model

    if settings.weights is None:
        torch.manual_seed(settings.seed)  # random weights, reproducible (as `pnasnet classify` does)
    return create_model(settings.model, weights=settings.weights, progress=False,
                        bounded_activation=settings.bounded_activation)


def prepare_served_model(model, settings: ServeSettings):
    """``model`` (already on its device) on the settings' back end and precision, converted in place:
    a worker has no use for the training form, and holds the weights once."""
    from ..inference import for_inference

    size = settings.image_size or model.expected_image_size[0]
    calibration = None
    if settings.precision == "int8":
        from ..tasks.inference import load_calibration_images

        calibration = load_calibration_images(list(settings.calibration), size, count=settings.calibration_count,
                                              transform=settings.transform)
    return for_inference(model, settings.backend, settings.precision, image_size=size, in_place=True,
                         calibration=calibration)


def served_predictor(model, settings: ServeSettings, **description):
    """The :class:`~pnasnet.serve.predictor.Predictor` a worker or replica runs: ``model`` (from
    :func:`prepare_served_model`) within the settings' limits; ``/v1/model`` describes it by the
    settings, its back end and precision, and ``description`` (the engine's own facts)."""
    from .predictor import Predictor

    return Predictor(model, image_size=settings.image_size, transform=settings.transform,
                     max_pixels=settings.max_pixels, max_images_per_call=settings.max_batch_size,
                     decode_threads=settings.decode_threads,
                     description={"model": settings.model, "weights": settings.describe_weights(),
                                  "backend": getattr(model, "backend", "plain"),
                                  "precision": getattr(model, "precision", "float32"),
                                  # "auto: why" when --backend auto chose it (pnasnet.inference.auto_choice)
                                  "backend_chosen_by": getattr(model, "chosen_by", "")
                                  or ("auto" if settings.backend == "auto" else "asked for"),
                                  **description})
