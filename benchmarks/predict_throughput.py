"""Inference throughput of `brats-seg predict`, next to a plain baseline, in one process.

  - slices/s: brats_seg.inference.bundle.predict_slices (batches of 256, inference mode, bf16 autocast and
    channels_last on CUDA) vs the baseline: one slice at a time, fp32, under no_grad (what a first
    implementation does);
  - slices/s of the registered model as an application runs it: the ONNX graph that `register` logs
    (brats_seg.registry.registered_model.export_onnx) in onnxruntime on the CPU, batches of 8, beside torch;
  - cases/s: whole cases, as `brats-seg predict` runs them: read the four NIfTI files, preprocess, predict,
    restore the mask to the original grid, write it (brats_seg.predict.predict_dirs), vs the same steps with
    the baseline's slice loop; and where the time of a case goes.

    python benchmarks/predict_throughput.py                       # CPU-sized defaults
    python benchmarks/predict_throughput.py --device cuda --cases 8

The model is a fresh U-Net of params.yaml's default size (base 32, depth 4, 128 x 128 slices); cases are
full-size synthetic BraTS cases (240 x 240 x 155).
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: it reads its settings at import

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from brats_seg.data.layouts import discover_cases, write_case  # noqa: E402
from brats_seg.data.preprocess import preprocess, restore_volume  # noqa: E402
from brats_seg.data.spec import SliceParams  # noqa: E402
from brats_seg.data.synthetic import make_case  # noqa: E402
from brats_seg.inference.bundle import load_model, predict_slices, save_model  # noqa: E402
from brats_seg.io.nifti import write_like  # noqa: E402
from brats_seg.models.config import ModelConfig
from brats_seg.models.unet import UNet  # noqa: E402
from brats_seg.predict import check_case, predict_dirs, read_modality  # noqa: E402
from brats_seg.registry.registered_model import export_onnx  # noqa: E402


def baseline_slices(model: torch.nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    """Probabilities, one slice at a time, fp32, the default (contiguous) memory layout, under no_grad."""
    model = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    out = []
    with torch.no_grad():
        for image in images:
            x = torch.from_numpy(image.astype(np.float32))[None].to(device)
            out.append(torch.sigmoid(model(x))[0, 0].cpu().numpy())
    return np.stack(out)


def onnx_slices(graph: bytes, images: np.ndarray, batch: int = 8) -> np.ndarray:
    """Probabilities of the registered ONNX graph in onnxruntime on the CPU, ``batch`` slices per run."""
    import onnxruntime

    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    x = images.astype(np.float32)
    return np.concatenate([session.run(None, {"slices": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def case_steps(raw: Path, model_path: Path, out: Path, device: torch.device, baseline: bool) -> dict[str, float]:
    """Seconds per step over every case: read, preprocess, predict, restore + write (the steps of predict_case)."""
    bundle = load_model(model_path, device)
    spec = bundle.spec
    spent = dict.fromkeys(("read", "preprocess", "predict", "restore_write"), 0.0)
    slices = 0
    for case in discover_cases(raw):
        t0 = time.perf_counter()
        grid = check_case(case, spec.modalities)
        volumes = np.stack([read_modality(case, m) for m in spec.modalities]).astype(np.float32)
        t1 = time.perf_counter()
        pre = preprocess(spec, volumes, grid.affine)
        t2 = time.perf_counter()
        with torch.inference_mode():
            probs = baseline_slices(bundle.model, pre.images, device) if baseline else \
                predict_slices(bundle.model, pre.images).float().cpu().numpy()[:, 0]
        t3 = time.perf_counter()
        mask = (restore_volume(probs, pre.z, pre.geometry) > bundle.threshold).astype(np.uint8)
        write_like(out / f"{case.case_id}_mask.nii.gz", mask, case.images[spec.modalities[0]][0])
        t4 = time.perf_counter()
        slices += len(pre.images)
        for name, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            spent[name] += seconds
    return {**spent, "slices": slices}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--base", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results/predict_throughput.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"generating {args.cases} full-size synthetic cases ...")
        for i in range(1, args.cases + 1):
            case = make_case(i, seed=7)
            write_case(tmp / "raw", case.case_id, case.images, case.seg, case.affine)
        torch.manual_seed(0)
        model = UNet(ModelConfig(4, 1, args.base, args.depth))
        slice_params = dataclasses.asdict(SliceParams(size=args.size))
        save_model(tmp / "unet.pt", model, ("wt",), slice_params)
        for folder in ("ours", "base", "steps"):
            (tmp / folder).mkdir()

        # slices/s on one case's slices
        bundle = load_model(tmp / "unet.pt", device)
        first = discover_cases(tmp / "raw")[0]
        spec = bundle.spec
        grid = check_case(first, spec.modalities)
        pre = preprocess(spec, np.stack([read_modality(first, m) for m in spec.modalities]).astype(np.float32),
                         grid.affine)
        with torch.inference_mode():
            predict_slices(bundle.model, pre.images[:8])  # warm-up
            ours_s = timed(lambda: predict_slices(bundle.model, pre.images).float().cpu(), device)
        base_s = timed(lambda: baseline_slices(bundle.model, pre.images, device), device)
        n = len(pre.images)
        graph = export_onnx(load_model(tmp / "unet.pt").model, pre.images[:2].astype(np.float32))
        onnx_slices(graph, pre.images[:8])  # warm-up: the session's first run plans its kernels
        onnx_s = timed(lambda: onnx_slices(graph, pre.images), torch.device("cpu"))
        with torch.inference_mode():
            logits = predict_slices(load_model(tmp / "unet.pt").model, pre.images, amp=False, sigmoid=False)
            torch_probs = torch.sigmoid(logits).cpu().numpy()
        onnx_gap = float(np.abs(onnx_slices(graph, pre.images) - torch_probs).max())
        # whole cases: the real command's function, and the same steps with the baseline's loop
        ours_cases = timed(lambda: predict_dirs([tmp / "raw"], str(tmp / "unet.pt"), tmp / "ours", args.device),
                           device)
        base_steps = case_steps(tmp / "raw", tmp / "unet.pt", tmp / "base", device, baseline=True)
        our_steps = case_steps(tmp / "raw", tmp / "unet.pt", tmp / "steps", device, baseline=False)
        base_cases = sum(v for k, v in base_steps.items() if k != "slices")
        same = all((tmp / "ours" / f.name).read_bytes() == f.read_bytes() for f in (tmp / "steps").iterdir())

    result = {"device": name, "args": vars(args), "slices_per_case": n,
              "slices_per_s": {"ours": n / ours_s, "baseline": n / base_s, "ratio": base_s / ours_s,
                               "onnxruntime_cpu": n / onnx_s, "onnx_max_abs_difference": onnx_gap},
              "cases_per_s": {"ours": args.cases / ours_cases, "baseline": args.cases / base_cases,
                              "ratio": base_cases / ours_cases},
              "case_seconds_by_step": {"ours": our_steps, "baseline": base_steps}, "steps_match_predict": same}
    print(f"\ndevice: {name}; U-Net base {args.base} depth {args.depth}, {args.size}x{args.size} slices, "
          f"{n} slices in the first case, {args.cases} cases")
    print(f"{'':46}{'slices/s':>10}{'cases/s':>10}")
    print(f"{'baseline: one slice at a time, fp32':46}{n / base_s:10.1f}{args.cases / base_cases:10.3f}")
    print(f"{'ours: predict_slices / brats-seg predict':46}{n / ours_s:10.1f}{args.cases / ours_cases:10.3f}")
    print(f"{'registered ONNX graph, onnxruntime CPU, batch 8':46}{n / onnx_s:10.1f}{'':>10}")
    print(f"ratio ours / baseline: {base_s / ours_s:.2f} (slices/s), {base_cases / ours_cases:.2f} (cases/s); "
          f"onnxruntime / ours: {ours_s / onnx_s:.2f} (slices/s, max |difference| {onnx_gap:.1e})")
    total = sum(v for k, v in our_steps.items() if k != "slices")
    print("where a case's time goes (ours): " + ", ".join(
        f"{k} {v / total:.0%}" for k, v in our_steps.items() if k != "slices"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
