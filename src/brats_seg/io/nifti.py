"""NIfTI reading and writing: the only module that touches .nii / .nii.gz files.

Reader contract (as in nnU-Net): arrays in voxel order ``(X, Y, Z)`` plus a :class:`Meta` that carries the
affine, spacing in mm and the on-disk dtype. Files a person names on the command line are read with
:func:`read_header` / :func:`read_volume`, which turn every failure into one :class:`DataError` sentence.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np

from brats_seg.errors import DataError
from brats_seg.io.atomic import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclasses.dataclass(frozen=True)
class Meta:
    """Geometry of a volume: 4x4 voxel-to-world affine (RAS+ mm), voxel spacing (mm), on-disk dtype."""

    affine: np.ndarray
    spacing: tuple[float, ...]
    dtype: str
    shape: tuple[int, ...]

    def same_grid(self, other: Meta, atol: float = 1e-3) -> bool:
        """True when both volumes share shape (first three axes) and affine."""
        return self.shape[:3] == other.shape[:3] and bool(np.allclose(self.affine, other.affine, atol=atol))


def is_nifti(path: str | Path) -> bool:
    """Whether the file name ends in .nii or .nii.gz (AppleDouble '._' files excluded)."""
    name = Path(path).name
    return not name.startswith("._") and name.lower().endswith(NIFTI_SUFFIXES)


def strip_suffix(name: str) -> str:
    """File name without its .nii / .nii.gz suffix."""
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_meta(path: str | Path) -> Meta:
    """Read only the header of a NIfTI file."""
    img = nib.load(str(path))
    return _meta(img)


def read_nifti(path: str | Path, dtype: type | None = None) -> tuple[np.ndarray, Meta]:
    """Read a volume as ``(array, meta)``; ``array`` is ``(X, Y, Z[, T])`` in ``dtype`` (default: on-disk)."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return data, _meta(img)


def read_header(path: str | Path, ndim: int | None = 3) -> Meta:
    """Header of a NIfTI file a user passed, checked: it exists, decodes and has ``ndim`` axes (any when
    None). Raises DataError with one sentence otherwise."""
    return _meta(_load_checked(Path(path), ndim))


def read_volume(path: str | Path, ndim: int | None = 3) -> tuple[np.ndarray, Meta]:
    """:func:`read_nifti` for a file a user passed: a missing, non-NIfTI, truncated or wrongly shaped file
    raises DataError with one sentence instead of a decoder's exception."""
    path = Path(path)
    img = _load_checked(path, ndim)
    try:
        data = np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's fault
        raise _unreadable(path, exc) from None
    return data, _meta(img)


def _load_checked(path: Path, ndim: int | None) -> nib.spatialimages.SpatialImage:
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; pass an existing NIfTI file (.nii or .nii.gz).")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises several kinds for "not a NIfTI file"
        raise _unreadable(path, exc) from None
    if ndim is not None and len(img.shape) != ndim:
        raise DataError(f"{path} is {len(img.shape)}D (shape {'x'.join(map(str, img.shape))}) but must be "
                        f"{ndim}D; pass one volume per file.")
    return img


def _unreadable(path: Path, exc: Exception) -> DataError:
    reason = " ".join(f"{type(exc).__name__}: {str(exc).replace(str(path), path.name)}".split())[:100]
    return DataError(f"{path} cannot be read as NIfTI ({reason}); check or replace the file (a truncated "
                     f"download is the usual cause).")


def write_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray, dtype: type | None = None) -> Path:
    """Write ``data`` with ``affine`` atomically (temp file, then rename). Returns the path."""
    path = Path(path)
    array = np.asarray(data if dtype is None else data.astype(dtype, copy=False))
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(array.dtype)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    _save(img, path)
    return path


def _meta(img: nib.spatialimages.SpatialImage) -> Meta:
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return Meta(affine=np.asarray(img.affine, dtype=np.float64), spacing=zooms,
                dtype=str(img.get_data_dtype()), shape=tuple(int(s) for s in img.shape))


def write_like(path: str | Path, data: np.ndarray, reference: str | Path, description: str | None = None) -> Path:
    """Write ``data`` ``(X, Y, Z)`` on the grid of the NIfTI file ``reference``: same affine, sform and
    qform codes and voxel sizes (a 4D reference gives its first three axes). Atomic like write_nifti.
    ``description`` goes into the header's ``descrip`` field (at most 79 bytes of it)."""
    path = Path(path)
    ref = nib.load(str(reference))
    if tuple(ref.shape[:3]) != data.shape:
        raise ValueError(f"data shape {data.shape} is not the reference grid {ref.shape[:3]}")
    header = ref.header.copy()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    img = nib.Nifti1Image(data, ref.affine, header)
    img.header.set_slope_inter(1.0, 0.0)
    sform, scode = ref.header.get_sform(coded=True)
    qform, qcode = ref.header.get_qform(coded=True)
    img.set_sform(sform if sform is not None else ref.affine, code=int(scode))
    img.set_qform(qform if qform is not None else ref.affine, code=int(qcode))
    if description is not None:
        img.header["descrip"] = description.encode("utf-8", "replace")[:79]
    _save(img, path)
    return path


def _save(img: nib.Nifti1Image, path: Path) -> None:
    with atomic_path(path, suffix=".nii.gz" if path.name.endswith(".gz") else ".nii") as tmp:
        nib.save(img, str(tmp))
