""".npy/.npz reading that checks each array's header before it allocates anything.

`np.load` trusts the header: a 100-byte file that declares a (10**12,) float64 array makes it
allocate 8 TB (MemoryError) before it finds the data missing, and an object array is a pickle.
Here each header is read first: object dtypes are refused (`allow_pickle` stays off), and an
array whose declared size exceeds the bytes actually stored is reported as truncated, so memory
stays bounded by the file's own size.
"""

from __future__ import annotations

import math
import zipfile
from typing import IO

import numpy as np
import numpy.lib.format as npy_format

__all__ = ["NpyError", "read_npy", "read_npy_file", "read_npz_file"]

#: Deflate cannot expand data more than ~1032x: an archive member claiming more is corrupt (and
#: would make a reader allocate for a "zip bomb" it cannot hold).
_MAX_RATIO = 1100


class NpyError(ValueError):
    """An .npy/.npz array torchship will not read; the message says why, in one line."""


def read_npy(fp: IO[bytes], *, available: int, what: str = "array") -> np.ndarray:
    """One .npy array from `fp`, which holds at most `available` bytes from its start."""
    version = npy_format.read_magic(fp)
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    if version not in readers:
        raise NpyError(f"{what}: .npy format {version[0]}.{version[1]} is not read (1.0, 2.0 are)")
    shape, fortran_order, dtype = readers[version](fp)
    if dtype.hasobject:
        raise NpyError(
            f"{what}: holds Python objects (dtype {dtype}, a pickle), which are never loaded; "
            "save numeric arrays (ragged data must be padded to one shape)"
        )
    declared = math.prod(shape) * dtype.itemsize
    stored = available - fp.tell()
    if declared > stored:
        raise NpyError(
            f"{what}: declares shape {list(shape)} of {dtype} ({declared} bytes) but holds "
            f"{max(stored, 0)} bytes; truncated or corrupt"
        )
    try:
        array = np.empty(math.prod(shape), dtype=dtype)
    except MemoryError:
        raise NpyError(f"{what}: {declared} bytes do not fit in memory") from None
    buffer, filled = memoryview(array.view(np.uint8)), 0
    while filled < declared:
        read = fp.readinto(buffer[filled:])
        if not read:
            raise NpyError(f"{what}: ends after {filled} of {declared} data bytes; truncated")
        filled += read
    if fortran_order:  # as numpy's own reader does
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)


def read_npy_file(path) -> np.ndarray:
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        return read_npy(f, available=size)


def read_npz_file(path) -> dict[str, np.ndarray]:
    """Every array of an .npz (by name, `.npy` stripped), each checked before it is read."""
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.file_size > _MAX_RATIO * info.compress_size + 4096:
                raise NpyError(
                    f"array {name!r}: the archive claims {info.file_size} bytes from "
                    f"{info.compress_size} compressed; corrupt"
                )
            with archive.open(info) as member:
                arrays[name] = read_npy(member, available=info.file_size, what=f"array {name!r}")
    return arrays
