"""Fuzz data files (torchship.data.open_data): .npz/.npy with wrong dtypes, object arrays
(`allow_pickle` stays off), ragged and 0-d arrays, truncated bytes and headers declaring huge
shapes, read against fixed- and dynamic-batch models."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format
from fuzzing import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from torchship.data import ShortBatch, load_arrays, open_data
from torchship.specs import InputSpec

_SPECS = [
    [InputSpec("image", "float32", (2, 3), {0: "batch"})],
    [InputSpec("image", "float32", (2, 3))],  # a fixed batch of 2
    [InputSpec("ids", "int64", (2, 4), {0: "batch", 1: "seq"}),
     InputSpec("mask", "int64", (2, 4), {0: "batch", 1: "seq"})],
]  # fmt: skip
_DTYPES = ["float32", "float64", "float16", "int64", "int32", "uint8", "bool", "complex64",
           "<U3", "S2", "datetime64[s]", "V4", [("a", "<f4"), ("b", "<i8")]]  # fmt: skip


@st.composite
def arrays(draw) -> np.ndarray:
    if draw(st.integers(0, 9)) == 0:  # ragged rows: numpy makes an object array of them
        rows = draw(st.lists(st.lists(st.floats(width=32), max_size=3), min_size=1, max_size=3))
        return np.array([np.array(r, dtype=np.float32) for r in rows] + [None], dtype=object)
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    raw = draw(st.binary(min_size=dtype.itemsize * int(np.prod(shape)),
                         max_size=dtype.itemsize * int(np.prod(shape))))  # fmt: skip
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)  # a hostile writer pickles what it likes
    return buffer.getvalue()


def _huge_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False,
                                               "shape": shape})  # fmt: skip
    return buffer.getvalue() + b"\0" * 64


@st.composite
def data_files(draw, folder: Path) -> Path:
    names = draw(st.lists(st.sampled_from(["image", "labels", "ids", "mask", "x", "a/b", ""]),
                          unique=True, max_size=4))  # fmt: skip
    members = {name: _npy_bytes(draw(arrays())) for name in names}
    if draw(st.booleans()):  # a header that declares far more than the file holds
        name = draw(st.sampled_from(["image", "labels", "ids"]))
        shape = tuple(draw(st.lists(st.integers(1, 10**12), min_size=1, max_size=3)))
        members[name] = _huge_header(draw(st.sampled_from(["<f4", "<i8", "|O"])), shape)
    kind = draw(st.sampled_from(["npz", "npz", "npz", "npy", "garbage", "dir"]))
    if kind == "npy":
        path = folder / "data.npy"
        path.write_bytes(next(iter(members.values()), b""))
    elif kind == "garbage":
        path = folder / "data.npz"
        path.write_bytes(draw(st.binary(max_size=300)))
    else:
        path = folder / "data.npz"
        method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
        with zipfile.ZipFile(path, "w", method) as archive:
            for name, raw in members.items():
                archive.writestr(f"{name}.npy", raw)
        if kind == "dir":
            (folder / "more").mkdir()
            path.rename(folder / "more" / "part0.npz")
            path = folder / "more"
    if kind != "dir" and draw(st.booleans()):  # truncated in transit
        raw = path.read_bytes()
        path.write_bytes(raw[: draw(st.integers(0, max(len(raw) - 1, 0)))])
    return path


@fuzz_settings(300)
@given(st.data(), st.sampled_from(range(len(_SPECS))), st.sampled_from(list(ShortBatch)))
def test_any_data_file_reads_or_fails_in_one_line(expect_clean, data, which, short):
    specs = _SPECS[which]
    with tempfile.TemporaryDirectory() as tmp:
        path = data.draw(data_files(Path(tmp)))
        before = sorted(p.name for p in Path(tmp).rglob("*"))

        def read_all():
            dataset = open_data(path, inputs=specs, samples=data.draw(st.sampled_from([None, 3])))
            for batch in dataset.batches(short=short):
                for spec in specs:
                    assert batch.feeds[spec.name].dtype == spec.np_dtype
            return load_arrays(path, inputs=specs)

        arrays_read = expect_clean(read_all)
        if arrays_read is not None:
            assert {s.name for s in specs} <= set(arrays_read)
        assert sorted(p.name for p in Path(tmp).rglob("*")) == before  # nothing written
