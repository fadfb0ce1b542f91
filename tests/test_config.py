from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from brats_seg.config import BaseParams, load_section, read_params
from brats_seg.data.download import DownloadParams
from brats_seg.data.slicing import SliceParams
from brats_seg.errors import ConfigError
from tests.conftest import PROJECT_ROOT


@dataclasses.dataclass(frozen=True)
class Inner:
    n: int = 1


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str
    mode: Literal["a", "b"] = "a"
    rate: float = 0.5
    sizes: tuple[int, ...] = (1,)
    inner: Inner = Inner()
    maybe: str | None = None


def test_project_params_load_into_every_section():
    params = read_params(PROJECT_ROOT / "params.yaml")
    base = load_section(BaseParams, params, "base")
    assert base.raw_dir == "data/raw"
    download = load_section(DownloadParams, params, "download")
    assert download.synthetic.shape == (240, 240, 155)
    assert load_section(SliceParams, params, "slice").modalities == ("flair", "t1", "t1ce", "t2")


def test_values_are_coerced_and_frozen():
    cfg = load_section(Outer, {"o": {"name": "x", "rate": 1, "sizes": [2, 3], "inner": {"n": 4}}}, "o")
    assert cfg == Outer(name="x", rate=1.0, sizes=(2, 3), inner=Inner(4))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "y"  # type: ignore[misc]


@pytest.mark.parametrize(("section", "message"), [
    ({"name": "x", "sise": 1}, "params.yaml: o.sise is not a known key"),
    ({"name": 3}, "params.yaml: o.name must be a string, got 3"),
    ({"name": "x", "rate": "fast"}, "params.yaml: o.rate must be a number, got 'fast'"),
    ({"name": "x", "sizes": [1, "2"]}, "params.yaml: o.sizes[1] must be an integer, got '2'"),
    ({"name": "x", "inner": {"n": True}}, "params.yaml: o.inner.n must be an integer, got True"),
    ({"name": "x", "inner": {"m": 1}}, "params.yaml: o.inner.m is not a known key"),
    ({"name": "x", "mode": "c"}, "params.yaml: o.mode must be one of 'a', 'b', got 'c'"),
    ({}, "params.yaml: o.name is missing"),
])
def test_bad_values_name_the_key(section, message):
    with pytest.raises(ConfigError) as err:
        load_section(Outer, {"o": section}, "o")
    assert str(err.value).startswith(message)


def test_missing_section_and_file_are_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="has no 'o' section"):
        load_section(Outer, {}, "o")
    with pytest.raises(ConfigError, match="does not exist"):
        read_params(tmp_path / "nope.yaml")


def test_slice_params_check_their_meaning():
    with pytest.raises(ConfigError, match="slice.modalities"):
        load_section(SliceParams, {"slice": {"modalities": ["flair", "dwi"]}}, "slice")
    with pytest.raises(ConfigError, match="slice.split"):
        load_section(SliceParams, {"slice": {"split": [0.5, 0.2, 0.2]}}, "slice")


def test_params_set_keeps_comments_and_refuses_unknown_keys(tmp_path):
    from brats_seg.config import set_params

    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 20   # the seed's default\n  lr: 1.0e-4\n")
    assert set_params(path, ["train.epochs=5", "train.lr=0.001"]) == {"train.epochs": 5, "train.lr": 0.001}
    text = path.read_text()
    assert "# the seed's default" in text and read_params(path)["train"] == {"epochs": 5, "lr": 0.001}
    with pytest.raises(ConfigError, match="train.epoch is not a known key"):
        set_params(path, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        set_params(path, ["train.epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        set_params(tmp_path / "missing.yaml", ["train.epochs=1"])


def test_a_missing_report_says_which_stage_to_run(tmp_path):
    from brats_seg.errors import DataError
    from brats_seg.io.tables import read_json

    with pytest.raises(DataError, match="eval.json does not exist; run the pipeline stage that writes it"):
        read_json(tmp_path / "eval.json")
