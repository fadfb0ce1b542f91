"""Training on CPU on a tiny synthetic cohort: learning, kill-and-resume, the MLflow record."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from brats_seg.data.dataset import load_split
from brats_seg.errors import ConfigError, DataError
from brats_seg.io.checkpoint import load_checkpoint
from brats_seg.training.loop import fingerprint, train_model, validate
from brats_seg.training.params import TrainParams

# Dice alone (bce_weight 0, the seed's loss): on this tiny cohort it leaves the 0.5 start within 2 epochs, so that
# the comparisons below are not decided by pixels sitting on the threshold
PARAMS = TrainParams(epochs=2, batch_size=8, lr=3e-3, base=8, depth=2, threads=1, augment=True, target="wt",
                     bce_weight=0.0)


def _train(slices: Path, params: TrainParams, checkpoint: Path):
    return train_model(params, load_split(slices, "train"), load_split(slices, "val"), seed=0,
                       checkpoint=checkpoint, slice_channels=4)


def test_two_epochs_lower_the_loss_and_raise_validation_dice(slices, tmp_path):
    result = _train(slices, PARAMS, tmp_path / "ckpt.pt")
    first, second = result.history
    assert second["train_loss"] < first["train_loss"]
    assert second["val_dice"] > first["val_dice"]
    assert result.best_epoch == 2 and result.regions == ("wt",)


def test_slices_the_network_cannot_pool_depth_times_are_one_sentence_before_training(slices, tmp_path):
    """However params.yaml was checked (a file that leaves train.depth out is checked at the default only by the
    whole-document check), training itself refuses slices whose side 2 ** depth does not divide."""
    with pytest.raises(ConfigError, match=r"slice.size must be a multiple of 2\*\*train.depth = 64 \(train.depth "
                                          r"is 6\), got 32; use a multiple of 64"):
        _train(slices, dataclasses.replace(PARAMS, depth=6), tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


def test_regions_target_has_three_channels(slices, tmp_path):
    result = _train(slices, dataclasses.replace(PARAMS, epochs=1, target="regions"), tmp_path / "c.pt")
    assert result.model.config.out_channels == 3 and result.regions == ("wt", "tc", "et")


def test_the_architecture_lever_trains_a_residual_unet_and_its_default_the_seeds_unet(slices, tmp_path):
    """train.model picks the network built by models.build: its default trains the U-Net exactly as before the
    lever existed (a U-Net built directly, same seed, same weights after training); resunet trains another
    network, which the model file names and load_model builds again."""
    from brats_seg.inference.bundle import load_model, save_model
    from brats_seg.models.config import ModelConfig
    from brats_seg.models.resunet import ResUNet
    from brats_seg.models.unet import UNet

    params = dataclasses.replace(PARAMS, epochs=1)
    default = _train(slices, params, tmp_path / "a.pt")
    torch.manual_seed(0)
    direct = UNet(ModelConfig(in_channels=4, out_channels=1, base=8, depth=2))
    assert type(default.model) is UNet and default.model.config.architecture == "unet"
    assert default.model.state_dict().keys() == direct.state_dict().keys()
    residual = _train(slices, dataclasses.replace(params, model="resunet"), tmp_path / "b.pt")
    assert type(residual.model) is ResUNet and residual.model.config.architecture == "resunet"
    assert residual.history[0]["val_dice"] != default.history[0]["val_dice"]
    x = torch.from_numpy(load_split(slices, "val").images[:4].astype("float32"))
    saved = save_model(tmp_path / "resunet.pt", residual.model, residual.regions,
                       {"size": 32, "margin": 4, "modalities": ["flair", "t1", "t1ce", "t2"]})
    bundle = load_model(saved)
    assert type(bundle.model) is ResUNet
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(x), residual.model.eval()(x))  # channels_last: rounding only
        assert not torch.allclose(bundle.model(x), default.model.eval()(x))


_KILLED = """
import sys
from pathlib import Path
from brats_seg.data.dataset import load_split
from brats_seg.training.loop import train_model
from brats_seg.training.params import TrainParams
slices, ckpt = Path(sys.argv[1]), Path(sys.argv[2])
params = TrainParams(epochs=int(sys.argv[3]), batch_size=8, lr=3e-3, base=8, depth=2, threads=1, target="wt",
                     bce_weight=0.0)
train_model(params, load_split(slices, "train"), load_split(slices, "val"), 0, ckpt, 4)
"""


def test_a_killed_run_resumes_and_ends_where_an_uninterrupted_run_would(slices, tmp_path, caplog):
    epochs = 8
    params = dataclasses.replace(PARAMS, epochs=epochs, augment=True)
    ckpt = tmp_path / "killed.pt"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(slices), str(ckpt), str(epochs)])
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(ckpt)["epoch"]
    assert 1 <= done < epochs, "the kill should land after the first checkpoint and before the end"
    with caplog.at_level("INFO", logger="brats_seg.training.loop"):
        resumed = _train(slices, params, ckpt)
    # it did resume (the killed process trained these very params: same fingerprint), not start over
    assert f"resuming from the checkpoint after epoch {done} of {epochs}" in caplog.text
    assert [h["epoch"] for h in resumed.history] == list(range(1, epochs + 1))
    straight = _train(slices, params, tmp_path / "straight.pt")
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.history == straight.history


@pytest.mark.parametrize("lever, on", [("bias_field", 1.0), ("modality_dropout", 0.5)])
def test_an_augmentation_lever_changes_the_trained_network_and_needs_augmentation(slices, tmp_path, lever, on):
    """train.bias_field and train.modality_dropout change the augmented batches: other weights after one epoch.
    Without train.augment there is no augmentation for them to join, so they change nothing."""
    params = dataclasses.replace(PARAMS, epochs=1)
    runs = {(augment, value): _train(slices, dataclasses.replace(params, augment=augment, **{lever: value}),
                                     tmp_path / f"{augment}-{value}.pt").model.state_dict()
            for augment in (True, False) for value in (0.0, on)}

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert not same(runs[True, 0.0], runs[True, on])
    assert same(runs[False, 0.0], runs[False, on])


def test_no_tumour_in_a_split_is_one_sentence(slices, tmp_path):
    train = load_split(slices, "train")
    empty = dataclasses.replace(train, labels=train.labels * 0)
    with pytest.raises(DataError, match="the train split has no slice with tumour"):
        train_model(PARAMS, empty, load_split(slices, "val"), 0, tmp_path / "c.pt", 4)


def test_cuda_requested_but_absent_fails_clearly(slices, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(Exception, match="the device is 'cuda' but no CUDA GPU is available"):
        _train(slices, dataclasses.replace(PARAMS, device="cuda"), tmp_path / "c.pt")


@pytest.mark.slow
def test_the_compiled_step_trains_like_the_eager_one(slices, tmp_path):
    """torch.compile (the fast GPU path) is correct on the CPU too: same losses, same weights to rounding. A U-Net of
    depth 1 (one skip connection, every kind of layer): on a cold inductor cache, as under CI, each generated kernel
    is a C++ compile, and depth 2 took 57 CPU s against 41."""
    params = dataclasses.replace(PARAMS, epochs=2, augment=True, depth=1)
    eager = _train(slices, params, tmp_path / "eager.pt")
    compiled = _train(slices, dataclasses.replace(params, compile=True), tmp_path / "compiled.pt")
    for a, b in zip(eager.history, compiled.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        # Dice thresholds probabilities at 0.5: rounding-level differences flip a few borderline pixels of this
        # 8-case cohort's validation set, so Dice gets a looser bound than the loss; predictions are checked below
        assert a["val_dice"] == pytest.approx(b["val_dice"], abs=5e-3)
    # Adam turns rounding-level gradient differences on near-zero gradients into lr-sized steps, so the
    # weights are compared through what matters: the two models' predictions on the validation slices.
    images = torch.from_numpy(load_split(slices, "val").images[:32].astype("float32"))
    with torch.no_grad():
        a, b = torch.sigmoid(eager.model(images)), torch.sigmoid(compiled.model(images))
    assert (a - b).abs().max() < 0.02 and ((a > 0.5) != (b > 0.5)).float().mean() < 0.005


def _key(train, val, params=PARAMS, seed=0, device="cpu", code="code-a"):
    return fingerprint(params, train, val, seed, device, code)


def test_the_fingerprint_covers_settings_data_content_val_set_epochs_seed_and_code(slices):
    train, val = load_split(slices, "train"), load_split(slices, "val")
    key = _key(train, val)
    assert key == _key(load_split(slices, "train"), load_split(slices, "val"))  # a pure function of its inputs
    assert _key(train, val, params=dataclasses.replace(PARAMS, resume=False)) == key  # runtime only
    one_pixel = train.images.copy()
    one_pixel[len(one_pixel) // 2, 0, 10, 10] += 1
    other_val = val.labels.copy()
    other_val[0, 0, 0] = 2
    changed = {
        "epochs": _key(train, val, params=dataclasses.replace(PARAMS, epochs=PARAMS.epochs + 1)),
        "lr": _key(train, val, params=dataclasses.replace(PARAMS, lr=1e-3)),
        "one image pixel": _key(dataclasses.replace(train, images=one_pixel), val),
        "modalities": _key(dataclasses.replace(train, images=train.images[:, :1]), val),
        "val labels": _key(train, dataclasses.replace(val, labels=other_val)),
        "val cases": _key(train, dataclasses.replace(val, case_ids=val.case_ids[::-1])),
        "seed": _key(train, val, seed=1),
        "device": _key(train, val, device="cuda"),
        "code": _key(train, val, code="code-b"),
        "architecture": _key(train, val, params=dataclasses.replace(PARAMS, model="resunet")),
        "bias field": _key(train, val, params=dataclasses.replace(PARAMS, bias_field=0.5)),
        "modality dropout": _key(train, val, params=dataclasses.replace(PARAMS, modality_dropout=0.25)),
    }
    assert len(set(changed.values()) | {key}) == len(changed) + 1, changed


def test_the_fingerprint_keys_the_resolved_computation(slices, monkeypatch):
    """One and the same computation has one fingerprint (auto or cpu on a CPU, amp on a CPU, threads 0 as the
    count torch uses); a different one has another (threads, amp on CUDA, the torch and numpy versions)."""
    train, val = load_split(slices, "train"), load_split(slices, "val")
    key = _key(train, val)

    def replaced(**changes):
        return _key(train, val, params=dataclasses.replace(PARAMS, **changes))

    assert replaced(device="auto") == replaced(device="cpu") == key  # device is where it runs; the type is keyed
    assert replaced(amp=False) == key  # no autocast on a CPU
    assert replaced(memory_gb=0.001) == key  # streamed or in memory: same rows, same order
    assert replaced(threads=0) == replaced(threads=torch.get_num_threads())
    cuda = _key(train, val, device="cuda")
    assert _key(train, val, params=dataclasses.replace(PARAMS, amp=False), device="cuda") != cuda
    assert replaced(threads=2) != key  # CPU kernels sum per thread: other weights
    monkeypatch.setattr(np, "__version__", "0.0.0")
    assert _key(train, val) != key
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert len({key, _key(train, val), replaced(threads=2)}) == 3


def test_a_batch_larger_than_the_training_set_is_said(slices, tmp_path, caplog):
    n = len(load_split(slices, "train"))
    with caplog.at_level("WARNING", logger="brats_seg.training.loop"):
        _train(slices, dataclasses.replace(PARAMS, epochs=1, batch_size=n + 1), tmp_path / "ckpt.pt")
    said = [r.getMessage() for r in caplog.records if "larger than the training set" in r.getMessage()]
    assert said == [f"train.batch_size {n + 1} is larger than the training set ({n} slices): every epoch is a single "
                    f"step on all of them; lower train.batch_size or add cases"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="brats_seg.training.loop"):
        _train(slices, dataclasses.replace(PARAMS, epochs=1, batch_size=n), tmp_path / "ckpt2.pt")
    assert not [r for r in caplog.records if "larger than the training set" in r.getMessage()]


def test_a_shorter_run_after_a_longer_one_trains_its_own_epochs(slices, tmp_path):
    ckpt = tmp_path / "same-path.pt"  # the worst case: both runs pointed at one checkpoint file
    _train(slices, dataclasses.replace(PARAMS, epochs=3), ckpt)
    short = _train(slices, dataclasses.replace(PARAMS, epochs=1), ckpt)
    assert [h["epoch"] for h in short.history] == [1]
    fresh = _train(slices, dataclasses.replace(PARAMS, epochs=1), tmp_path / "fresh.pt")
    for (name, a), b in zip(short.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), name


class _Threshold(torch.nn.Module):
    """Predicts channel 0 > 0 for every region: a model whose output the test controls through its input."""

    def __init__(self, regions: int) -> None:
        super().__init__()
        self.regions = regions
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (20.0 * (x[:, :1] > 0).float() - 10.0).repeat(1, self.regions, 1, 1)


def test_validation_dice_is_per_case_then_per_region():
    from brats_seg.data.dataset import SliceSet

    labels = np.zeros((3, 4, 4), np.uint8)
    labels[0, 0, :2] = 2   # case a: 2 oedema voxels
    labels[1, 1, :2] = 4   # case b: 2 enhancing voxels
    pred = np.zeros((3, 1, 4, 4), np.float16)
    pred[0, 0, 0, :2] = 1  # case a: exact
    pred[1, 0, 1, 0] = 1   # case b: 1 of 2 found
    pred[2, 0, 3, 3] = 1   # case c (no tumour): 1 false positive
    data = SliceSet(pred, labels, np.array(["a", "b", "c"]), np.arange(3))
    wt = validate(_Threshold(1), data, ("wt",))
    assert wt["val_dice"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    assert wt["val_dice_pooled"] == pytest.approx(2 * 3 / (4 + 4))
    regions = validate(_Threshold(3), data, ("wt", "tc", "et"))
    # TC and ET: case a has no TC/ET but a prediction (0); b: 2/3; c: a false positive (0)
    assert regions["val_dice"] == pytest.approx(((1 + 2 / 3 + 0) / 3 + (0 + 2 / 3 + 0) / 3 * 2) / 3)


def test_validation_loss_uses_the_training_loss_terms(slices):
    from brats_seg.training.losses import segmentation_loss

    val = load_split(slices, "val")
    model = _Threshold(1)
    # in chunks of 7 slices, so that the sums over parts must add up to the whole set's loss
    plain, with_bce = validate(model, val, ("wt",), chunk=7), validate(model, val, ("wt",), bce_weight=0.5, chunk=7)
    from brats_seg.training.feed import region_targets

    logits = model(torch.from_numpy(val.images.astype(np.float32)))
    target = region_targets(torch.from_numpy(val.labels), ("wt",))
    assert plain["val_loss"] == pytest.approx(float(segmentation_loss(logits, target)), rel=1e-5)
    assert with_bce["val_loss"] == pytest.approx(float(segmentation_loss(logits, target, 0.5)), rel=1e-5)
    assert with_bce["val_loss"] > plain["val_loss"]


def test_the_learning_rate_schedules_by_hand():
    from brats_seg.training.params import lr_at

    params = dataclasses.replace(PARAMS, epochs=4, lr=1e-3)
    assert [lr_at(params, e) for e in range(4)] == [1e-3] * 4  # constant: the seed's Adam 1e-4 style
    cosine = [lr_at(dataclasses.replace(params, schedule="cosine"), e) for e in range(4)]
    assert cosine == pytest.approx([1e-3, 1e-3 * (1 + 2 ** -0.5) / 2, 0.5e-3, 1e-3 * (1 - 2 ** -0.5) / 2])
    poly = [lr_at(dataclasses.replace(params, schedule="poly"), e) for e in range(4)]
    assert poly == pytest.approx([1e-3 * (1 - e / 4) ** 0.9 for e in range(4)])
    assert poly[-1] > 0 and cosine[-1] > 0  # the last epoch still learns


class _Stop(Exception):
    pass


def _stop_after_second(epoch: int, metrics: dict) -> None:
    if epoch == 2:
        raise _Stop


@pytest.mark.parametrize("schedule", ["cosine", "poly"])
def test_a_decaying_schedule_is_what_the_optimiser_steps_with_and_resumes_exactly(slices, tmp_path, schedule):
    from brats_seg.training.params import lr_at

    params = dataclasses.replace(PARAMS, epochs=3, schedule=schedule)
    straight = _train(slices, params, tmp_path / "straight.pt")
    constant = _train(slices, dataclasses.replace(params, schedule="constant"), tmp_path / "constant.pt")
    weights = list(straight.model.state_dict().values())
    assert any(not torch.equal(a, b) for a, b in zip(weights, constant.model.state_dict().values()))
    # stopped after epoch 2: the checkpoint's optimiser ran epoch 2 at lr_at(1), below lr; the resumed run ends
    # where the straight one did, weight for weight
    ckpt = tmp_path / "stopped.pt"
    with pytest.raises(_Stop):
        train_model(params, load_split(slices, "train"), load_split(slices, "val"), seed=0, checkpoint=ckpt,
                    slice_channels=4, on_epoch=_stop_after_second)
    saved = load_checkpoint(ckpt)
    assert saved["epoch"] == 2 and saved["optimiser"]["param_groups"][0]["lr"] == pytest.approx(lr_at(params, 1))
    assert lr_at(params, 1) < params.lr
    resumed = _train(slices, params, ckpt)
    assert resumed.history == straight.history
    for a, b in zip(resumed.model.state_dict().values(), weights):
        assert torch.equal(a, b)
    splits = [load_split(slices, s) for s in ("train", "val")]
    assert _key(*splits, params=params) != _key(*splits, params=dataclasses.replace(params, schedule="constant"))
