"""The streamed shard reader (ShardRows, and ShardedSplit over it) against np.load of the same files, row by row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brats_seg.data.dataset import ShardedSplit
from brats_seg.io.shards import SHARD_KEYS, ShardError, ShardRows, write_shard

# (rows, channels, height, width) of shards as the slice stage writes them (4 modalities or a subset, any
# slice.size) and at the edges: one row, one channel, odd sizes
SHAPES = [(7, 4, 16, 16), (1, 1, 8, 8), (5, 2, 13, 11), (12, 3, 24, 24)]


def _arrays(shape: tuple[int, int, int, int], seed: int, layout: str = "C") -> tuple[np.ndarray, ...]:
    """Images, labels and z as a caller might hand them to write_shard: float32 images, int64 labels and z, in
    C or Fortran order; every row different, so that a row read from the wrong place shows."""
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    images = rng.normal(size=shape).astype(np.float32) + np.arange(n, dtype=np.float32)[:, None, None, None]
    labels = rng.choice(np.array([0, 1, 2, 4]), size=(n, h, w))
    labels[:, 0, 0] = np.arange(n) % 256
    z = rng.permutation(155)[:n].astype(np.int64)
    order = {"C": np.ascontiguousarray, "F": np.asfortranarray}[layout]
    return order(images), order(labels), z


def _read_rows(reader: ShardRows, key: str, rows: np.ndarray) -> np.ndarray:
    _, shape, dtype = reader.arrays[key]
    out = np.empty((len(rows), *shape[1:]), dtype=dtype)
    reader.read(key, rows, out)
    return out


def _row_orders(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """All rows ascending (one run), back to front, shuffled, a subset with gaps, repeats, and single rows."""
    orders = [np.arange(n), np.arange(n)[::-1].copy(), rng.permutation(n), np.arange(0, n, 2),
              rng.integers(0, n, size=2 * n)]
    return orders + [np.array([r]) for r in range(n)]


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shard_rows_match_np_load_row_by_row_for_every_array_the_writer_makes(tmp_path, shape, layout):
    images, labels, z = _arrays(shape, seed=sum(shape), layout=layout)
    path = write_shard(tmp_path / "case.npz", images, labels, z)
    with np.load(path) as npz:
        stored = {key: npz[key] for key in npz.files}
    assert sorted(stored) == sorted(SHARD_KEYS)
    # what the writer makes: float16 images [N, C, H, W], uint8 labels [N, H, W], int16 z [N], in C order
    assert {k: (v.dtype, v.shape) for k, v in stored.items()} == {
        "images": (np.dtype(np.float16), shape), "labels": (np.dtype(np.uint8), (shape[0], *shape[2:])),
        "z": (np.dtype(np.int16), (shape[0],))}
    assert np.array_equal(stored["images"], images.astype(np.float16)) and np.array_equal(stored["labels"], labels)
    reader = ShardRows(path)
    assert reader.rows == shape[0]
    for key, expected in stored.items():
        assert reader.arrays[key][1:] == (expected.shape, expected.dtype), key
        for rows in _row_orders(shape[0], np.random.default_rng(0)):
            got = _read_rows(reader, key, rows)
            for i, row in enumerate(rows):
                assert np.array_equal(got[i], expected[row]), (key, rows.tolist(), i)


def test_a_fortran_ordered_shard_written_elsewhere_is_refused_in_one_sentence(tmp_path):
    images, labels, z = _arrays((3, 2, 8, 8), seed=1, layout="F")
    path = tmp_path / "foreign.npz"
    np.savez(path, images=images.astype(np.float16), labels=labels.astype(np.uint8), z=z.astype(np.int16))
    with pytest.raises(ShardError, match="laid out as brats-seg never writes; rerun the slice stage"):
        ShardRows(path)


def _split_on_disk(root: Path, shapes: list[tuple[int, ...]]) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Shards of several cases under ``root/shards`` and an index of every row in them, in (case, z) order as
    split_rows gives it; returns (index rows, {shard: np.load of it})."""
    rows, stored = [], {}
    for k, shape in enumerate(shapes):
        images, labels, z = _arrays(shape, seed=10 + k, layout="CF"[k % 2])
        shard = f"shards/case{k}.npz"
        write_shard(root / shard, images, labels, z)
        with np.load(root / shard) as npz:
            stored[shard] = {key: npz[key] for key in npz.files}
        rows += [{"case_id": f"case{k}", "z": int(zz), "shard": shard, "row": r} for r, zz in enumerate(z)]
    return pd.DataFrame(rows).sort_values(["case_id", "z"]).reset_index(drop=True), stored


def test_a_sharded_split_takes_the_rows_np_load_gives_in_the_order_asked(tmp_path):
    index, stored = _split_on_disk(tmp_path, [(6, 4, 16, 16), (9, 4, 16, 16), (1, 4, 16, 16), (4, 4, 16, 16)])
    split = ShardedSplit(tmp_path, index)
    assert split.shape == (20, 4, 16, 16)
    rng = np.random.default_rng(3)
    for idx in [np.arange(20), np.arange(20)[::-1].copy(), rng.permutation(20), rng.integers(0, 20, 30),
                np.array([5]), np.array([], dtype=np.int64)]:
        images, labels = split.take(idx)
        assert images.dtype == np.float16 and labels.dtype == np.uint8 and len(images) == len(labels) == len(idx)
        for i, j in enumerate(idx):
            rec = index.iloc[j]
            assert np.array_equal(images[i], stored[rec["shard"]]["images"][rec["row"]]), (idx.tolist(), i)
            assert np.array_equal(labels[i], stored[rec["shard"]]["labels"][rec["row"]]), (idx.tolist(), i)
    loaded = split.load()  # the in-memory split is the same rows through the same reader: checked against np.load
    expected = np.stack([stored[s]["images"][r] for s, r in zip(index["shard"], index["row"])])
    assert np.array_equal(loaded.images, expected)
    assert np.array_equal(np.concatenate([c[1] for c in split.chunks(7)]),
                          np.stack([stored[s]["labels"][r] for s, r in zip(index["shard"], index["row"])]))
