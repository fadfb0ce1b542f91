"""Past one process: streaming training sets from their shards, and DistributedDataParallel on 2 gloo processes."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from brats_seg.config import ConfigError
from brats_seg.data.dataset import ShardedSplit, load_split, open_split
from brats_seg.errors import exit_on_user_error
from brats_seg.io.checkpoint import load_checkpoint
from brats_seg.io.shards import ShardError
from brats_seg.training.loop import fingerprint, train_model
from brats_seg.training.params import TrainParams
from tests.support.projects import make_dvc_project, run_cmd

# instance norm: each sample is normalised on its own, so a batch split over processes is the same computation
PARAMS = TrainParams(epochs=3, batch_size=8, lr=3e-3, base=8, depth=2, norm="instance", threads=1, augment=True)

# Two processes add up their gradients in another order than one process does: the losses agree to rounding, and
# Adam turns rounding-level differences of near-zero gradients into steps of up to lr, so the two models are
# compared through their predictions on the validation slices (as the compiled step is in test_train.py): 2
# processes vs 1 differ by 0.002 at most (measured), another seed by 0.7.
PROB_ATOL = 0.02
# One step's gradients, 2 ranks vs 1: rtol 1e-5, and for entries near zero an atol of this share of the tensor's
# largest gradient (float32 rounding of sums taken in another order: 8e-6 at most, measured); half the gradient
# misses by 0.5.
GRAD_ATOL = 1e-4


def _weights(result) -> dict[str, torch.Tensor]:
    return result.model.state_dict()


def _prediction_gap(slices: Path, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Largest difference of two weight sets' probabilities on the validation slices, and the share of pixels
    whose thresholded prediction differs."""
    from brats_seg.models.config import ModelConfig
    from brats_seg.models.unet import UNet

    images = torch.from_numpy(load_split(slices, "val").images.astype("float32"))
    probs = []
    for weights in (a, b):
        regions = int(weights["head.bias"].shape[0])  # 3 with the default train.target (regions)
        model = UNet(ModelConfig(in_channels=4, out_channels=regions, base=8, depth=2, norm="instance"))
        model.load_state_dict(weights)
        with torch.no_grad():
            probs.append(torch.sigmoid(model.eval()(images)))
    return float((probs[0] - probs[1]).abs().max()), float(((probs[0] > 0.5) != (probs[1] > 0.5)).float().mean())


def test_a_sharded_split_reads_the_same_rows_as_the_loaded_one(slices):
    loaded, sharded = load_split(slices, "train"), open_split(slices, "train")
    assert isinstance(sharded, ShardedSplit) and len(sharded) == len(loaded) and sharded.shape == loaded.shape
    assert sharded.nbytes == loaded.nbytes
    idx = np.random.default_rng(0).permutation(len(loaded))[:13]
    images, labels = sharded.take(idx)
    assert np.array_equal(images, loaded.images[idx]) and np.array_equal(labels, loaded.labels[idx])
    chunks = list(sharded.chunks(5))
    assert np.array_equal(np.concatenate([c[0] for c in chunks]), loaded.images)
    assert fingerprint(PARAMS, sharded, open_split(slices, "val"), 0, "cpu", "c") == \
        fingerprint(PARAMS, loaded, load_split(slices, "val"), 0, "cpu", "c")


def test_streaming_from_the_shards_trains_exactly_the_in_memory_model(slices, tmp_path):
    in_memory = train_model(PARAMS, load_split(slices, "train"), load_split(slices, "val"), 0, tmp_path / "a.pt", 4)
    streamed = train_model(PARAMS, open_split(slices, "train"), open_split(slices, "val"), 0, tmp_path / "b.pt", 4)
    assert streamed.history == in_memory.history
    for name, weight in _weights(in_memory).items():
        assert torch.equal(weight, _weights(streamed)[name]), name


def test_a_truncated_shard_is_one_sentence_not_a_short_batch(slices, tmp_path, capsys):
    import shutil

    copy = tmp_path / "slices"
    shutil.copytree(slices, copy)
    shard = sorted((copy / "shards").glob("*.npz"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ShardError, match="rerun the slice stage"):
        for split in ("train", "val", "test"):
            open_split(copy, split)

    @exit_on_user_error
    def stage() -> None:
        for split in ("train", "val", "test"):
            open_split(copy, split)

    with pytest.raises(SystemExit) as exited:  # what a stage does with it: one sentence, exit 2
        stage()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: shard ") and err.count("\n") == 1 and "Traceback" not in err


def test_nproc_must_divide_the_batch():
    with pytest.raises(ConfigError, match="train.batch_size.*multiple of train.nproc"):
        dataclasses.replace(PARAMS, batch_size=9, nproc=2)


_RANK = """
import sys
from pathlib import Path
import torch
from brats_seg.data.dataset import load_split
from brats_seg.training.distributed import process_group
from brats_seg.training.loop import train_model
from brats_seg.training.params import TrainParams
slices, ckpt, out, epochs, seed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
params = TrainParams(epochs=epochs, batch_size=8, lr=3e-3, base=8, depth=2, norm="instance", threads=1, nproc=2)
with process_group(2, "cpu") as ranks:
    result = train_model(params, load_split(slices, "train"), load_split(slices, "val"), seed, ckpt, 4, ranks=ranks)
    if ranks.main:
        torch.save({"weights": result.model.state_dict(), "losses": [h["train_loss"] for h in result.history]}, out)
"""


def _torchrun(tmp_path: Path, slices: Path, ckpt: Path, out: Path, epochs: int, seed: int = 0,
              **popen) -> subprocess.Popen:
    script = tmp_path / "rank.py"
    script.write_text(_RANK)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(slices), str(ckpt), str(out), str(epochs), str(seed)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _finish(proc: subprocess.Popen) -> None:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]


@pytest.mark.slow  # torchrun or gloo processes
def test_two_gloo_processes_train_what_one_process_does_with_the_same_global_batch(slices, tmp_path):
    single = train_model(PARAMS, load_split(slices, "train"), load_split(slices, "val"), 0, tmp_path / "one.pt", 4)
    _finish(_torchrun(tmp_path, slices, tmp_path / "two.pt", tmp_path / "two.out", PARAMS.epochs))
    two = torch.load(tmp_path / "two.out", weights_only=True)
    assert two["losses"] == pytest.approx([h["train_loss"] for h in single.history], rel=1e-4)
    gap, flipped = _prediction_gap(slices, two["weights"], _weights(single))
    print(f"2 processes vs 1: probabilities differ by at most {gap:.2g}; {flipped:.2%} of pixels flip")
    assert gap < PROB_ATOL and flipped < 0.005
    other_seed = train_model(PARAMS, load_split(slices, "train"), load_split(slices, "val"), 1, tmp_path / "s.pt", 4)
    gap, flipped = _prediction_gap(slices, _weights(other_seed), _weights(single))
    print(f"another seed: probabilities differ by at most {gap:.2g}; {flipped:.2%} of pixels flip")
    assert gap > 5 * PROB_ATOL  # the tolerance tells runs apart


_GRADIENT = """
import sys
import torch
from brats_seg.training.distributed import process_group
from brats_seg.models.config import ModelConfig
from brats_seg.models.unet import UNet
from brats_seg.training.loop import _parallel, make_step
from brats_seg.training.params import TrainParams
batch, out = torch.load(sys.argv[1], weights_only=True), sys.argv[2]
params = TrainParams(batch_size=8, base=8, depth=2, norm="instance", bce_weight=0.5, amp=False, threads=1, nproc=2)
with process_group(2, "cpu") as ranks:
    torch.manual_seed(0)
    model = UNet(ModelConfig(in_channels=4, out_channels=1, base=8, depth=2, norm="instance"))
    step = make_step(_parallel(model, params, ranks.device, ranks), torch.optim.SGD(model.parameters(), lr=0.0),
                     params, ranks.device, ranks)
    part = slice(ranks.rank * 4, ranks.rank * 4 + 4)  # this rank's half of the global batch of 8
    loss = step(batch["x"][part], batch["y"][part])
    torch.save({"loss": loss, "grads": {n: p.grad for n, p in model.named_parameters()}}, f"{out}.{ranks.rank}")
"""


def _one_step_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ranks=None) -> tuple:
    """(loss, {parameter: gradient}) of one training step of the project's own step function; lr 0 keeps the
    weights, so the gradients are the step's."""
    from brats_seg.training.loop import make_step

    params = TrainParams(batch_size=len(x), base=8, depth=2, norm="instance", bce_weight=0.5, amp=False, threads=1)
    loss = make_step(model, torch.optim.SGD(model.parameters(), lr=0.0), params, torch.device("cpu"), ranks)(x, y)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.slow  # torchrun or gloo processes
def test_one_step_on_two_gloo_ranks_has_the_gradients_of_one_process_on_the_global_batch(slices, tmp_path):
    """The gradients themselves, not the trained model: Adam divides a uniform gradient scale away, so a step
    whose gradient is halved (a missing all-reduce in the backward pass) trains almost the same model."""
    from brats_seg.models.config import ModelConfig
    from brats_seg.models.unet import UNet
    from brats_seg.training.feed import region_targets

    train = load_split(slices, "train")
    pick = np.flatnonzero(train.labels.reshape(len(train), -1).max(axis=1) > 0)[:6].tolist() + [0, 1]
    batch = {"x": torch.from_numpy(train.images[pick].astype(np.float32)),
             "y": region_targets(torch.from_numpy(train.labels[pick]), ("wt",))}
    torch.save(batch, tmp_path / "batch.pt")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    one_loss, one = _one_step_gradients(UNet(ModelConfig(in_channels=4, out_channels=1, base=8, depth=2,
                                                        norm="instance")), batch["x"], batch["y"])
    script = tmp_path / "gradient.py"
    script.write_text(_GRADIENT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    _finish(subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              str(script), str(tmp_path / "batch.pt"), str(tmp_path / "grads")], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    ranks = [torch.load(tmp_path / f"grads.{rank}", weights_only=True) for rank in (0, 1)]
    # each rank's loss: the global batch's Dice plus its own half's BCE, so their mean is the global loss
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, one_loss, rtol=1e-5, atol=0.0)
    worst = max(float((two["grads"][n] - g).abs().max() / g.abs().max()) for two in ranks for n, g in one.items())
    print(f"2 ranks vs 1: gradients differ by at most {worst:.2g} of each tensor's largest gradient")
    for rank, two in enumerate(ranks):
        assert two["grads"].keys() == one.keys()
        for name, grad in one.items():  # the sums run in another order: entries near 0 differ by float32 rounding
            torch.testing.assert_close(two["grads"][name], grad, rtol=1e-5, atol=GRAD_ATOL * float(grad.abs().max()),
                                       msg=lambda m, n=name, r=rank: f"rank {r}, {n}: {m}")
    assert all(float(g.abs().max()) > 0 for g in one.values())  # every parameter gets a gradient to compare


@pytest.mark.slow  # torchrun or gloo processes
def test_a_killed_two_process_run_resumes_to_the_weights_of_an_uninterrupted_one(slices, tmp_path):
    epochs = 6
    ckpt = tmp_path / "killed.pt"
    proc = _torchrun(tmp_path, slices, ckpt, tmp_path / "killed.out", epochs)
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.005)
    launcher = psutil.Process(proc.pid)
    for process in [launcher, *launcher.children(recursive=True)]:  # torchrun runs each rank in its own session
        process.kill()
    proc.communicate()
    done = load_checkpoint(ckpt)["epoch"]
    assert 1 <= done < epochs, "the kill should land after the first checkpoint and before the end"
    _finish(_torchrun(tmp_path, slices, ckpt, tmp_path / "resumed.out", epochs))
    _finish(_torchrun(tmp_path, slices, tmp_path / "straight.pt", tmp_path / "straight.out", epochs))
    resumed, straight = (torch.load(tmp_path / f"{n}.out", weights_only=True) for n in ("resumed", "straight"))
    assert resumed["losses"] == straight["losses"]
    for name, weight in straight["weights"].items():
        assert torch.equal(weight, resumed["weights"][name]), name


def _train_reports(repo) -> dict:
    """train.json (numbers: a DVC metric) and train_run.json (the run's identifiers) of the train stage."""
    return {**json.loads((repo / "reports" / "train.json").read_text()),
            **json.loads((repo / "reports" / "train_run.json").read_text())}


@pytest.mark.slow  # torchrun or gloo processes
def test_dvc_repro_trains_on_two_processes_and_streams_past_the_memory_budget(tmp_path):
    """The stage as users run it: `dvc repro` starts torchrun itself for train.nproc: 2; a training set over
    train.memory_gb streams from its shards and gives the very model file the in-memory run gives."""
    write = make_dvc_project(tmp_path / "repo", {"train": {"norm": "instance", "memory_gb": 0}})
    repo = write.path
    run_cmd(["dvc", "repro", "train"], repo)
    streamed = _train_reports(repo)
    assert streamed["streamed"] == ["train", "val"] and streamed["processes"] == 1
    assert 100 < streamed["peak_rss_mb"] < 8000
    model = (repo / "models" / "unet.pt").read_bytes()

    write({"train": {"memory_gb": "auto"}})  # runtime only: dvc sees nothing to do, so the stage is forced
    run_cmd(["dvc", "repro", "--force", "--single-item", "train"], repo)
    assert _train_reports(repo)["streamed"] == []
    assert (repo / "models" / "unet.pt").read_bytes() == model

    write({"train": {"nproc": 2}})
    status = run_cmd(["dvc", "status", "train"], repo).stdout
    assert "train.nproc" in status  # a param of the stage: another result, so another run
    proc = run_cmd(["dvc", "repro", "train"], repo)
    two = _train_reports(repo)
    assert two["processes"] == 2 and two["fingerprint"] != streamed["fingerprint"]
    log = proc.stdout + proc.stderr
    assert "training on 2 processes" in log and log.count("no CUDA GPU available") <= 1
    assert "torch.distributed" not in log and "OMP_NUM_THREADS" not in log  # torchrun's own chatter stays out
    one_weights = torch.load(io.BytesIO(model), weights_only=True)["state_dict"]
    two_weights = torch.load(repo / "models" / "unet.pt", weights_only=True)["state_dict"]
    gap, _ = _prediction_gap(repo / "data" / "slices", one_weights, two_weights)
    assert gap < PROB_ATOL


@pytest.mark.slow  # torchrun or gloo processes
def test_a_user_error_under_torchrun_is_said_once(tmp_path):
    """Both ranks meet it; rank 0 says it, torchrun's failure report stays out, the exit code is the stage's."""
    import yaml

    from brats_seg.orchestration.provenance import PROJECT_ROOT

    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["train"].update(nproc=2, batch_size=8)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_cmd([sys.executable, "-m", "stages.train"], tmp_path, check=False,
                   env={"PYTHONPATH": f"{PROJECT_ROOT / 'src'}{os.pathsep}{PROJECT_ROOT}"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "index.parquet does not exist" in line]
    assert len(errors) == 1, proc.stderr
    assert "ChildFailedError" not in proc.stderr and "elastic" not in proc.stderr
