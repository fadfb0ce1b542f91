"""Recognise BraTS-like folder layouts and write cases in the canonical layout.

Canonical layout (docs/design.md): ``<root>/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` with BraTS 2020
labels. Cases without a label map (validation sets) go to ``<root>/_unlabelled/<case>/``: they cannot be
trained on and are kept apart.

Recognised source layouts:

* BraTS 2020 / 2021: ``<case>_flair``, ``_t1``, ``_t1ce``, ``_t2``, ``_seg`` (.nii or .nii.gz), including
  BraTS 2020 case 355 whose label file is misnamed (the one other file in the folder with "seg" in its name);
* BraTS 2023: ``<case>-t2f``, ``-t1n``, ``-t1c``, ``-t2w``, ``-seg``; enhancing tumour 3 becomes 4;
* Medical Segmentation Decathlon Task01: ``imagesTr/<case>.nii.gz`` holding a 4D image (FLAIR, T1w, T1gd,
  T2w) and ``labelsTr/<case>.nii.gz``; labels 1 -> 2, 2 -> 1, 3 -> 4.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from brats_seg.data.labels import CANONICAL_LABELS, INVALID_LABEL, label_ids, to_canonical
from brats_seg.errors import DataError
from brats_seg.io.atomic import file_sha256
from brats_seg.io.nifti import is_nifti, read_nifti, strip_suffix, write_nifti

log = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
CANONICAL_FILES: tuple[str, ...] = (*MODALITIES, "seg")
UNLABELLED_DIR = "_unlabelled"

_BRATS2020 = re.compile(r"^(?P<case>.+)_(?P<kind>flair|t1ce|t1|t2|seg)$", re.IGNORECASE)
_BRATS2023 = re.compile(r"^(?P<case>.+)-(?P<kind>t2f|t1n|t1c|t2w|seg)$", re.IGNORECASE)
_NAMES_2023 = {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2", "seg": "seg"}
_MSD_IMAGE_DIRS = {"imagestr", "imagests", "imagesva"}
_MSD_LABEL_DIRS = {"labelstr", "labelsts", "labelsva"}
LAYOUTS_LOOKED_FOR = (
    "BraTS 2020/2021 (<case>_flair, _t1, _t1ce, _t2, _seg .nii.gz), "
    "BraTS 2023 (<case>-t2f, -t1n, -t1c, -t2w, -seg .nii.gz) and "
    "Medical Segmentation Decathlon (imagesTr/<case>.nii.gz 4D with labelsTr/<case>.nii.gz)"
)


@dataclasses.dataclass(frozen=True)
class CaseSource:
    """Where one case's files are. ``images[m] = (path, channel)``; channel is set for 4D images."""

    case_id: str
    convention: str
    images: dict[str, tuple[Path, int | None]]
    seg: Path | None

    @property
    def labelled(self) -> bool:
        return self.seg is not None

    def paths(self) -> list[Path]:
        found = {p for p, _ in self.images.values()}
        return sorted(found | ({self.seg} if self.seg else set()))


def discover_cases(root: str | Path) -> list[CaseSource]:
    """Find every case under ``root`` in any recognised layout, sorted by case id.

    Raises DataError when nothing is recognised or when one case id appears twice.
    """
    root = Path(root)
    files = list(walk_nifti(root))
    by_case: dict[tuple[str, str, Path], dict[str, Path]] = defaultdict(dict)
    msd: dict[str, dict[str, Path]] = defaultdict(dict)
    leftovers: list[Path] = []
    for path in files:
        stem = strip_suffix(path.name)
        parent = path.parent.name.lower()
        if parent in _MSD_IMAGE_DIRS | _MSD_LABEL_DIRS:
            msd[stem]["label" if parent in _MSD_LABEL_DIRS else "image"] = path
        elif m := _BRATS2020.match(stem):
            _add(by_case, (m["case"], "brats2020", path.parent), m["kind"].lower(), path)
        elif m := _BRATS2023.match(stem):
            _add(by_case, (m["case"], "brats2023", path.parent), _NAMES_2023[m["kind"].lower()], path)
        else:
            leftovers.append(path)
    _attach_misnamed_segs(by_case, leftovers)
    cases = [CaseSource(case, conv, {m: (p, None) for m, p in parts.items() if m != "seg"}, parts.get("seg"))
             for (case, conv, _), parts in by_case.items()]
    cases += [CaseSource(stem, "msd", {m: (parts["image"], i) for i, m in enumerate(MODALITIES)},
                         parts.get("label")) for stem, parts in msd.items() if "image" in parts]
    if leftovers:
        log.warning("ignored %d NIfTI file(s) that match no known layout, e.g. %s", len(leftovers), leftovers[0])
    if not cases:
        raise DataError(f"no BraTS cases found under {root}; looked for {LAYOUTS_LOOKED_FOR}.")
    _refuse_duplicates(cases)
    return sorted(cases, key=lambda c: c.case_id)


def walk_nifti(root: str | Path) -> Iterator[Path]:
    """Every NIfTI file under ``root`` that :func:`discover_cases` looks at, in sorted order: hidden and
    ``__MACOSX`` folders are skipped, links to files are listed, links to folders are not followed."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _skipped_dir(d))
        for name in sorted(filenames):
            if is_nifti(name):
                yield Path(dirpath) / name


def _skipped_dir(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def refuse_outside_links(root: str | Path) -> None:
    """Raise DataError when a symbolic link under ``root`` (outside hidden folders) points outside ``root``
    or nowhere: a source folder must hold its cases, not borrow them from elsewhere."""
    root = Path(root).resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _skipped_dir(d))
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath) / name
            if not path.is_symlink():
                continue
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError):  # missing target, or a loop of links
                raise DataError(f"{path} is a broken symbolic link (to {os.readlink(path)}); remove it or restore "
                                f"its target.") from None
            if not target.is_relative_to(root):
                raise DataError(f"{path} is a symbolic link to {target}, outside the source folder {root}; "
                                f"replace the link with a copy of its target, or use a folder that holds it.")


def _add(by_case: dict, key: tuple[str, str, Path], kind: str, path: Path) -> None:
    if kind in by_case[key]:
        raise DataError(f"case {key[0]} has two {kind} files ({by_case[key][kind]} and {path}); "
                        f"remove one of them.")
    by_case[key][kind] = path


def _attach_misnamed_segs(by_case: dict, leftovers: list[Path]) -> None:
    """BraTS 2020 case 355 ships its label map as e.g. ``W39_1998.09.19_Segm.nii``: attach such files."""
    for (case, _, folder), parts in by_case.items():
        if "seg" in parts or not all(m in parts for m in MODALITIES):
            continue
        candidates = [p for p in leftovers if p.parent == folder and "seg" in p.name.lower()]
        if len(candidates) == 1:
            log.info("case %s: using misnamed label file %s", case, candidates[0].name)
            parts["seg"] = candidates[0]
            leftovers.remove(candidates[0])


def _refuse_duplicates(cases: list[CaseSource]) -> None:
    seen: dict[str, CaseSource] = {}
    for case in cases:
        if not case.case_id or case.case_id.startswith(".") or any(c in case.case_id for c in "/\\\0"):
            raise DataError(f"case id {case.case_id!r} (from {case.paths()[0]}) cannot name a folder: it is empty, "
                            f"starts with a dot or holds a path separator; rename its files.")
        key = case.case_id.lower()
        if key in seen:
            first, second = seen[key].paths()[0].parent, case.paths()[0].parent
            raise DataError(f"case id {case.case_id} appears twice ({first} and {second}); "
                            f"keep one copy or rename one of them.")
        seen[key] = case


def canonical_dir(root: str | Path, case: CaseSource) -> Path:
    """Where ``case`` lives in the canonical layout."""
    root = Path(root)
    return root / case.case_id if case.labelled else root / UNLABELLED_DIR / case.case_id


def canonical_path(case_dir: str | Path, case_id: str, kind: str) -> Path:
    """``<case_dir>/<case_id>_<kind>.nii.gz``."""
    return Path(case_dir) / f"{case_id}_{kind}.nii.gz"


def write_canonical(case: CaseSource, root: str | Path) -> dict[str, str]:
    """Write ``case`` into the canonical layout under ``root``; returns ``{file name: sha256}``.

    A source file that cannot be decoded is copied as it is, so that validation quarantines the case and
    reports why.
    """
    with _atomic_case_dir(canonical_dir(root, case)) as tmp:
        for kind, (path, channel) in case.images.items():
            _write_one(path, channel, tmp, case, kind)
        if case.seg is not None:
            _write_one(case.seg, None, tmp, case, "seg")
    return _checksums(canonical_dir(root, case))


def write_case(root: str | Path, case_id: str, images: dict[str, np.ndarray], seg: np.ndarray | None,
               affine: np.ndarray) -> dict[str, str]:
    """Write arrays (``(X, Y, Z)`` each) as a canonical case; ``seg=None`` files it as unlabelled."""
    final = Path(root) / case_id if seg is not None else Path(root) / UNLABELLED_DIR / case_id
    with _atomic_case_dir(final) as tmp:
        for kind, data in images.items():
            write_nifti(canonical_path(tmp, case_id, kind), data, affine)
        if seg is not None:
            write_nifti(canonical_path(tmp, case_id, "seg"), seg.astype(np.uint8), affine)
    return _checksums(final)


@contextlib.contextmanager
def _atomic_case_dir(final: Path) -> Iterator[Path]:
    """Yield a hidden folder to fill; it replaces ``final`` only when the block completes."""
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _checksums(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir())}


def _write_one(src: Path, channel: int | None, out_dir: Path, case: CaseSource, kind: str) -> None:
    dest = canonical_path(out_dir, case.case_id, kind)
    plain_copy = case.convention == "brats2020" and channel is None and src.name.lower().endswith(".gz")
    if plain_copy:
        shutil.copyfile(src, dest)
        return
    try:
        data, meta = read_nifti(src)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "keep the bytes, quarantine later"
        log.warning("case %s: %s is unreadable (%s); copied as it is for validation to report", case.case_id,
                    src.name, exc)
        shutil.copyfile(src, dest.with_name(dest.name.replace(".nii.gz", "") + _suffix(src)))
        return
    if channel is not None:
        if data.ndim != 4 or data.shape[3] <= channel:
            log.warning("case %s: %s is not a 4D image with a channel %d", case.case_id, src.name, channel)
            return
        data = data[..., channel]
    if kind == "seg":
        data = _canonical_seg(data, case.convention)
    write_nifti(dest, np.ascontiguousarray(data), meta.affine)


def _canonical_seg(seg: np.ndarray, convention: str) -> np.ndarray:
    """The label map in canonical labels (uint8). Where the source holds values that are no label at all
    (NaN, negative, fractional), the map stays float and keeps them as they were, so that validation
    quarantines the case naming the values the source really has, not a stand-in."""
    canonical = to_canonical(seg, convention)
    invalid = canonical == INVALID_LABEL
    as_source = invalid & ~np.isin(label_ids(seg), sorted(CANONICAL_LABELS))  # 4 in a 2023 file stays 255
    if not as_source.any():
        return canonical
    out = canonical.astype(np.float32)
    out[as_source] = seg[as_source]
    return out


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"


def list_canonical_cases(root: str | Path) -> list[Path]:
    """Case folders of a canonical raw directory (labelled cases only), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def canonical_files(case_dir: str | Path) -> dict[str, Path | None]:
    """``{kind: path or None}`` for the five canonical files of a case folder (.nii.gz or .nii)."""
    case_dir = Path(case_dir)
    found: dict[str, Path | None] = {}
    for kind in CANONICAL_FILES:
        stem = f"{case_dir.name}_{kind}"
        hits = [case_dir / f"{stem}{s}" for s in (".nii.gz", ".nii") if (case_dir / f"{stem}{s}").exists()]
        found[kind] = hits[0] if hits else None
    return found
