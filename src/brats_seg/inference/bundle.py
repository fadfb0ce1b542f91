"""Model files and batched slice inference, shared by training (validation), evaluation and prediction."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import numpy as np
import torch

from brats_seg.data.labels import REGIONS
from brats_seg.data.spec import SliceSpec, spec_problem
from brats_seg.errors import UserError
from brats_seg.inference.postprocess import NONE, PostProcess
from brats_seg.models.config import ModelConfig
from brats_seg.models.factory import build

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """A trained model and what is needed to use it: target regions, slice preprocessing, threshold and the
    post-processing chosen on its validation patients."""

    model: torch.nn.Module
    regions: tuple[str, ...]
    slice_params: dict
    threshold: float = 0.5
    origin: str = ""  # the file or registry version it was loaded from
    fingerprint: str = ""  # the training fingerprint: settings, data and code that made the weights
    cohort: dict = dataclasses.field(default_factory=dict)  # source kind, train/val cases and patients
    postprocess: PostProcess = NONE  # chosen on the validation split by the train stage (none in older files)
    tta: bool = False  # test-time mirroring (evaluate.tta when it was trained): probabilities averaged over flips

    @property
    def spec(self) -> SliceSpec:
        """The slice settings typed: what predict and rescore preprocess a case with."""
        return SliceSpec.from_record(self.slice_params)


def pick_device(requested: str) -> torch.device:
    """``cpu``, ``cuda`` (fails without a GPU) or ``auto`` (GPU when present, else CPU with a warning)."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise UserError("the device is 'cuda' but no CUDA GPU is available; set it to 'auto' to fall back "
                        "to the CPU, or to 'cpu'.")
    _warn_cpu()
    return torch.device("cpu")


@functools.cache
def _warn_cpu() -> None:
    log.warning("no CUDA GPU available: running on the CPU")  # once per process


def save_model(path: str | Path, model: torch.nn.Module, regions: tuple[str, ...], slice_params: dict,
               extra: dict | None = None) -> Path:
    """Write the model file: weights, model config (architecture and sizes), target regions, slice
    preprocessing (and ``extra``).

    Only what made the weights goes in (no run id, no time), so the same training gives the same bytes and
    DVC can tell that a run reproduced. Loads with ``weights_only=True``.
    """
    from brats_seg.io.checkpoint import save_checkpoint

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_checkpoint(path, {"state_dict": state, "config": dataclasses.asdict(model.config),
                                  "regions": list(regions), "slice": slice_params, **(extra or {})})


def load_model(path: str | Path, device: torch.device | str = "cpu") -> ModelBundle:
    """A model file written by :func:`save_model`; anything else is refused with one sentence."""
    from brats_seg.io.checkpoint import load_weights_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; train one first (dvc repro train).")
    data = load_weights_file(path)
    if not isinstance(data, dict) or not {"state_dict", "config", "regions", "slice"} <= set(data):
        raise UserError(f"{path} is a torch file but not a brats-seg model (it lacks state_dict, config, regions "
                        f"or slice); pass a model written by the train stage (models/unet.pt).")
    try:
        config = ModelConfig(**data["config"])
        model = build(config)
        model.load_state_dict(data["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path} does not hold weights that fit its model config ({str(exc)[:100]}); retrain "
                        f"the model (dvc repro train).") from None
    problem = field_problem(data, config)
    if problem:
        raise UserError(f"{path} holds {problem}; pass a model written by the train stage (models/unet.pt), or "
                        f"retrain it (dvc repro train).")
    model.to(device, memory_format=torch.channels_last).eval()
    cohort = data.get("cohort") if isinstance(data.get("cohort"), dict) else {}
    return ModelBundle(model, tuple(data["regions"]), dict(data["slice"]), float(data.get("threshold", 0.5)),
                       str(path), str(data.get("fingerprint", "")), cohort, _postprocess(data),
                       bool(data.get("tta", False)))


def _postprocess(data: dict) -> PostProcess:
    """The model file's post-processing (checked by :func:`field_problem`); none in files written before it."""
    return NONE if data.get("postprocess") is None else PostProcess.from_dict(data["postprocess"])


def field_problem(data: dict, config: ModelConfig) -> str | None:
    """What is wrong with a model file's regions, slice settings or threshold for its model ``config``, as a
    clause ("an invalid threshold 'abc' (...)"); None when every field can be used as it is."""
    regions, spec, threshold = data["regions"], data["slice"], data.get("threshold", 0.5)
    if not (isinstance(regions, (list, tuple)) and len(regions) == config.out_channels
            and all(r in REGIONS for r in regions) and len(set(regions)) == len(regions)):
        return (f"invalid regions {regions!r} (distinct names among {', '.join(REGIONS)}, one per output channel: "
                f"{config.out_channels})")
    problem = spec_problem(spec, config.in_channels, 2 ** config.depth)
    if problem:
        return problem
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 < threshold < 1):
        return f"an invalid threshold {threshold!r} (a number between 0 and 1)"
    if not isinstance(data.get("tta", False), bool):
        return f"an invalid test-time mirroring setting {data['tta']!r} (true or false)"
    return _cohort_problem(data.get("cohort", {})) or _postprocess_problem(data.get("postprocess"), regions)


def _postprocess_problem(postprocess: object, regions: list[str]) -> str | None:
    """What is wrong with a model file's post-processing, as a clause; None when it is absent or usable."""
    if postprocess is None:
        return None
    try:
        chosen = PostProcess.from_dict(postprocess)
    except (UserError, ValueError, TypeError) as exc:
        return f"invalid post-processing {postprocess!r} ({str(exc).rstrip('.')[:120]})"
    extra = sorted(set(chosen.min_component_mm3) - set(regions))
    return f"post-processing for regions it does not predict ({', '.join(extra)})" if extra else None


def _cohort_problem(cohort: object) -> str | None:
    """What is wrong with a model file's training cohort (what predict reports and which label convention its
    label maps default to), as a clause; None when it is absent or usable."""
    counts = ("train_cases", "train_patients", "val_cases", "val_patients")
    if not (isinstance(cohort, dict) and all(_is_int(cohort.get(k, 0)) and cohort.get(k, 0) >= 0 for k in counts)
            and isinstance(cohort.get("source", ""), str)
            and cohort.get("label_convention", "brats2020") in ("brats2020", "brats2023", "msd")):
        return (f"an invalid training cohort {cohort!r} (source, label_convention brats2020/brats2023/msd, and case "
                f"and patient counts)")
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Slices per forward pass: big batches keep a GPU busy; on CPUs small ones stay in cache (measured with
# benchmarks/predict_throughput.py: 128 x 128 slices, base 32, 2 cores: 8 per batch 2.5x faster than 256).
GPU_BATCH, CPU_BATCH = 256, 8


# The flips test-time mirroring averages over: the mirrorings the training augmentation draws (each axis, both),
# nnU-Net's default for 2D models. Their own inverses, so a prediction is flipped back by the same dims.
MIRRORS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def predict_mirrored(model: torch.nn.Module, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Sigmoid probabilities float32 ``[N, R, H, W]`` averaged over :data:`MIRRORS`: each flipped input's
    prediction flipped back, then the mean (test-time mirroring; four forward passes)."""
    total = None
    for dims in MIRRORS:
        flipped = np.ascontiguousarray(np.flip(images, dims)) if dims else images
        p = predict_slices(model, flipped, batch_size).float().cpu().numpy()
        p = np.flip(p, dims) if dims else p
        total = p.astype(np.float32) if total is None else total + p
    return total / np.float32(len(MIRRORS))


@torch.no_grad()
def predict_slices(model: torch.nn.Module, images: np.ndarray | torch.Tensor, batch_size: int | None = None,
                   amp: bool = True, sigmoid: bool = True) -> torch.Tensor:
    """Sigmoid probabilities ``[N, R, H, W]`` (float16, on the model's device) for images ``[N, C, H, W]``;
    with ``sigmoid=False`` the logits instead (float32). ``batch_size`` defaults to what suits the device."""
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    batch_size = batch_size or (GPU_BATCH if cuda else CPU_BATCH)
    was_training = model.training
    model.eval()
    data = torch.as_tensor(images)
    out = []
    fmt = torch.channels_last  # faster on CPUs too (oneDNN), whatever the model's own layout
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and cuda):
        for start in range(0, len(data), batch_size):
            x = data[start:start + batch_size].to(device, non_blocking=True).float().contiguous(memory_format=fmt)
            logits = model(x).float()
            out.append(torch.sigmoid(logits).half() if sigmoid else logits)
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, device=device, dtype=torch.float16 if sigmoid else torch.float32)


# Fewer real training patients than this and every prediction says so: BraTS models learn from hundreds.
MIN_REAL_PATIENTS = 100


def cohort_summary(bundle: ModelBundle) -> str:
    """``trained on 17 cases of 17 patients (synthetic)``, or that the model records no cohort."""
    c = bundle.cohort
    if not c:
        return "its training cohort is not recorded"
    return f"trained on {c.get('train_cases', '?')} cases of {c.get('train_patients', '?')} patients " \
           f"({c.get('source', 'unknown')})"


def cohort_warning(bundle: ModelBundle) -> str | None:
    """A sentence for every mask of a model that learnt from synthetic cases, from few real patients, or from
    an unknown cohort; None otherwise."""
    c = bundle.cohort
    if not c:
        return (f"{bundle.origin} records no training cohort (trained by an older brats-seg): what it learnt from "
                f"is unknown; check every mask")
    patients = int(c.get("train_patients", 0))
    if c.get("source") == "synthetic":
        return (f"{bundle.origin} was trained on synthetic cases only ({patients} patients): its masks demonstrate "
                f"the pipeline and say nothing reliable about a real scan")
    if patients < MIN_REAL_PATIENTS:
        return (f"{bundle.origin} was trained on {patients} real patients only (fewer than {MIN_REAL_PATIENTS}): "
                f"check every mask")
    return None
