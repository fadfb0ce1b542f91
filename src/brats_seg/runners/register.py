"""Runner of the DVC stage `register`: log the trained model to MLflow as an ONNX graph (a model that carries no
code, :mod:`brats_seg.registry.registered_model`) and register a new version with the SHA-256 of its files."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from brats_seg.base_params import BaseParams
from brats_seg.data.spec import SliceSpec
from brats_seg.inference.bundle import ModelBundle, load_model, predict_slices
from brats_seg.io.tables import read_json, write_json
from brats_seg.registry import gate, registered_model, tracking, versions
from brats_seg.registry.params import RegisterParams

log = logging.getLogger(__name__)


# What an application needs to know to feed the registered model and read its output (the model's metadata).
MODEL_CONTRACT = {
    "input": "float32 [N, C, H, W]: preprocessed axial slices, C channels in the order of slice.modalities; with "
             "slice.context k, each modality gives 2k + 1 channels, the slices z - k to z + k in that order (0 "
             "beyond the brain's first and last slice; channels names them)",
    "output": "float32 [N, R, H, W]: sigmoid probabilities, R channels in the order of regions (with tta: true, "
              "the graph itself averages them over the input flipped along W, H and both, flipped back); "
              "mask = probability > threshold of its region, mapped back to the case's grid; the ONNX graph's input "
              "is 'slices', its output 'probabilities'",
    "postprocessing": "per case, on its own grid: per region, drop connected components (26-connectivity) under "
                      "postprocess.min_component_mm3; then, when the ET volume is under postprocess.et_min_mm3, ET "
                      "becomes necrotic core; then nest the regions as a label map does (ET in TC in WT); label map: "
                      "WT -> oedema, TC -> necrotic core, ET -> enhancing tumour, in label_convention's ids",
    "preprocessing": "per case (modalities on one grid): reorient to LPS; brain = voxels non-zero in any "
                     "modality; keep the axial slices from the first to the last that hold brain; crop them all to "
                     "one square box around the brain widened by slice.margin voxels (rows anterior to posterior, "
                     "zero outside the volume); z-score each modality over the case's brain voxels, background 0 (with "
                     "slice.normalise clip: the brain voxels clipped to their 0.5th and 99.5th percentiles first); "
                     "resize bilinearly to slice.size x slice.size (align_corners false)",
}


def model_metadata(bundle: ModelBundle) -> dict:
    """The registered model's metadata: the network (architecture and sizes), target regions, the label convention
    of its label maps, slice preprocessing, threshold per region, the post-processing chosen on validation, and its
    contract."""
    return {"model": dataclasses.asdict(bundle.model.config), "regions": list(bundle.regions),
            "label_convention": bundle.cohort.get("label_convention", "brats2020"),
            "slice": bundle.slice_params, "channels": bundle.spec.channel_names(),
            "threshold": {r: bundle.threshold for r in bundle.regions},
            "postprocess": bundle.postprocess.to_dict(), "tta": bundle.tta, **MODEL_CONTRACT}


def model_tag(bundle: ModelBundle) -> str:
    """The network in a few words, for `brats-seg versions`: ``resunet base 16 depth 3, 3 members, context 1``."""
    config, spec = bundle.model.config, bundle.spec
    words = [f"{config.architecture} base {config.base} depth {config.depth}"]
    if config.members > 1:
        words.append(f"{config.members} members")
    if spec.context:
        words.append(f"context {spec.context}")
    return ", ".join(words)


def synthetic_example(spec: SliceSpec, batch: int = 2) -> np.ndarray:
    """Z-scored noise float32 ``[batch, C, size, size]`` of the model's input shape: no patient data goes into
    the registry."""
    shape = (batch, spec.channels, spec.size, spec.size)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def register_stage(params: RegisterParams, base: BaseParams) -> dict:
    """Register the model file as a new version (its ONNX graph, with the model file beside it, see
    :mod:`brats_seg.registry.registered_model`) with alias ``register.alias``, tagged with its run's provenance."""
    bundle = load_model(base.model)
    train = read_json(base.train_run)
    evaluation = read_json(base.eval_report)
    run = tracking.get_run(train["run_id"])
    example = synthetic_example(bundle.spec)
    if bundle.tta:  # the graph averages over the mirrorings: so does its output example
        with torch.no_grad():
            output = registered_model.probability_module(bundle.model, True)(torch.as_tensor(example)).numpy()
    else:
        output = predict_slices(bundle.model, example, amp=False, sigmoid=False).sigmoid().numpy()
    tags = {key: run["tags"][key] for key in ("git_commit", "git_dirty", "dvc_raw_md5", "dvc_slices_md5",
                                              "split_digest", "slice_index_digest", "test_content_digest",
                                              "eval_code_digest", "lesionwise_config") if key in run["tags"]}
    for region, stats in evaluation.items():
        if isinstance(stats, dict):
            for kind in gate.KINDS:
                if f"{kind}_mean" in stats:
                    tags[gate.tag(region, kind)] = f"{stats[f'{kind}_mean']:.6f}"
            tags[f"test_{region}_hd95_median"] = f"{stats['hd95_median']}"
    tags.update(run_id=train["run_id"], regions=",".join(bundle.regions), postprocess=bundle.postprocess.describe(),
                tta=str(bundle.tta).lower(), model=model_tag(bundle))
    graph = registered_model.export_onnx(bundle.model, example, bundle.tta)
    record = versions.register_model(train["run_id"], graph, base.model, params.model_name, example, output,
                                     model_metadata(bundle), tags, params.alias)
    record["test_wt_dice_mean"] = evaluation.get("wt", {}).get("dice_mean")
    write_json(base.registered_report, record)
    log.info("registered %s version %s as @%s", record["name"], record["version"], params.alias)
    return record
