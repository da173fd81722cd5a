"""Calibration and evaluation data: readers that stream checked batches of model inputs.

Sources: an `.npz` (one array per input name, first axis = samples; eval files may add
`labels`), an `.npy` (single-input models), a directory of such files, an in-memory mapping,
or a Python `module:function` / `file.py:function` returning an iterable of dicts of arrays.
Every batch is checked against the model's inputs; the sha256 and count of what was fed are
accumulated while streaming, so nothing but the current batch is held.
"""

from __future__ import annotations

import enum
import hashlib
import importlib
import logging
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchship.errors import CalibrationError, ConfigError, ModelLoadError, first_line
from torchship.files import import_python_file
from torchship.npyio import NpyError, read_npy_file, read_npz_file
from torchship.specs import InputSpec

__all__ = [
    "LABELS_KEY",
    "check_labels",
    "top1_accuracy",
    "Batch",
    "DataSet",
    "ShortBatch",
    "open_data",
    "load_arrays",
]

log = logging.getLogger(__name__)

LABELS_KEY = "labels"
_DEFAULT_BATCH = 32
_SUFFIXES = (".npz", ".npy")

Chunk = dict[str, np.ndarray]
#: Errors numpy raises on corrupt or truncated files (array reads in an .npz are lazy).
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


class ShortBatch(str, enum.Enum):
    """What a pass does with a batch shorter than a model's fixed batch axis."""

    ERROR = "error"  # feed it as is: the shape check refuses it
    DROP = "drop"  # skip it (calibration: what was fed is what the hash describes)
    PAD = "pad"  # repeat its first sample up to the batch; `Batch.padding` says how many


@dataclass(frozen=True)
class Batch:
    """Checked model inputs by name, the file they came from, and labels when the data has them.

    The last `padding` rows of the feeds repeat the first one to fill a fixed batch axis; they
    are not samples, and `labels` covers only the real rows.
    """

    feeds: dict[str, np.ndarray]
    origin: str
    labels: np.ndarray | None = None
    padding: int = 0

    @property
    def size(self) -> int:
        return len(next(iter(self.feeds.values())))

    @property
    def samples(self) -> int:
        return self.size - self.padding


class DataSet:
    """A re-iterable, streaming view of one data source checked against `inputs`.

    After a full pass, `sha256` and `count` describe exactly the samples that were yielded
    (padding rows excluded); `dropped` and `padded` count what a fixed batch axis left out or
    added in that pass.
    """

    def __init__(
        self,
        name: str,
        chunks: Callable[[], Iterator[tuple[str, Chunk]]],
        *,
        inputs: Sequence[InputSpec],
        batch_size: int | None = None,
    ) -> None:
        self.name = name
        self.inputs = tuple(inputs)
        self._chunks = chunks
        self.batch_size = batch_size or _batch_size_for(self.inputs)
        self.fixed_batch = not _dynamic_batch(self.inputs)
        self.sha256 = ""
        self.count = self.dropped = self.padded = 0

    def batches(self, *, short: ShortBatch = ShortBatch.ERROR) -> Iterator[Batch]:
        """Checked batches; `short` says what to do with one below a fixed batch axis."""
        digest, count, dropped, padded = hashlib.sha256(), 0, 0, 0
        for origin, chunk in self._chunks():
            for batch in _split(origin, chunk, self.batch_size, self.inputs):
                if self.fixed_batch and batch.size < self.batch_size:
                    if short is ShortBatch.DROP:
                        log.warning(
                            "%s: dropped %d samples that do not fill the model's fixed batch "
                            "of %d", batch.origin, batch.size, self.batch_size
                        )  # fmt: skip
                        dropped += batch.size
                        continue
                    if short is ShortBatch.PAD:
                        batch = _padded(batch, self.batch_size)
                        padded += batch.padding
                _check_batch(batch, self.inputs)
                _update_digest(digest, batch)
                count += batch.samples
                yield batch
        if count == 0:
            extra = f" ({dropped} dropped: fewer than the fixed batch {self.batch_size})"
            raise CalibrationError(
                f"{self.name}: no samples (an empty data set)" + (extra if dropped else "")
            )
        self.sha256, self.count = digest.hexdigest(), count
        self.dropped, self.padded = dropped, padded

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def describe(self) -> dict:
        """{"source", "sha256", "samples"} after a full pass, plus "dropped_samples" or
        "padding_rows" when a fixed batch axis made that pass leave out or add rows."""
        out: dict = {"source": self.name, "sha256": self.sha256, "samples": self.count}
        if self.dropped:
            out["dropped_samples"] = self.dropped
        if self.padded:
            out["padding_rows"] = self.padded
        return out


def open_data(
    source: str | Path | Mapping[str, np.ndarray],
    *,
    inputs: Sequence[InputSpec],
    samples: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> DataSet:
    """A DataSet over `source`; `samples` keeps a seeded random subset of that many samples."""
    if samples is not None and samples < 1:
        raise ConfigError(f"--samples {samples}: must be >= 1")
    if isinstance(source, Mapping):
        arrays = {k: np.asarray(v) for k, v in source.items()}
        chunks = _array_chunks("<arrays>", arrays, samples=samples, seed=seed)
        return DataSet("<arrays>", chunks, inputs=inputs, batch_size=batch_size)
    text = str(source)
    path = Path(text)
    if path.is_dir():
        chunks = _dir_chunks(path, inputs, samples=samples, seed=seed)
    elif path.suffix in _SUFFIXES:
        if not path.is_file():
            raise CalibrationError(f"{path}: no such data file")
        chunks = _file_chunks(path, inputs, samples=samples, seed=seed)
    elif ":" in text:
        chunks = _function_chunks(text, samples=samples)
    else:
        raise CalibrationError(
            f"{text}: not a data source; expected an .npz/.npy file, a directory of them, "
            "or module:function"
        )
    return DataSet(text, chunks, inputs=inputs, batch_size=batch_size)


def load_arrays(
    source: str | Path, *, inputs: Sequence[InputSpec], what: str = "data"
) -> dict[str, np.ndarray]:
    """All of `source` in memory, by input name plus `labels` when it has them.

    For training and evaluation sets that are read many times (pruning's fine-tuning epochs);
    it goes through the same readers and checks as calibration, so every source works. The
    count need not be a multiple of a fixed batch axis: the padding is cut off again.
    """
    try:
        batches = list(open_data(source, inputs=inputs).batches(short=ShortBatch.PAD))
    except CalibrationError as exc:
        raise CalibrationError(f"{what}: {exc}") from None
    arrays = {
        s.name: np.concatenate([b.feeds[s.name][: b.samples] for b in batches]) for s in inputs
    }
    labelled = [b.labels is not None for b in batches]
    if any(labelled) and not all(labelled):
        raise CalibrationError(f"{what} {source}: some files have `labels` and some do not")
    if all(labelled):
        arrays[LABELS_KEY] = np.concatenate([b.labels[: b.samples] for b in batches])
    return arrays


# --- sources ----------------------------------------------------------------------------------


def _load_file(path: Path, inputs: Sequence[InputSpec]) -> Chunk:
    try:
        if path.suffix == ".npy":
            if len(inputs) != 1:
                names = ", ".join(s.name for s in inputs)
                raise CalibrationError(
                    f"{path}: an .npy file holds one array but the model takes {len(inputs)} "
                    f"inputs ({names}); use an .npz with one array per input name"
                )
            return {inputs[0].name: read_npy_file(path)}
        return read_npz_file(path)  # headers checked first: no pickles, no absurd allocations
    except CalibrationError:
        raise
    except NpyError as exc:
        raise CalibrationError(f"{path}: {exc}") from None
    except _READ_ERRORS as exc:
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        raise CalibrationError(
            f"{path}: not a readable numpy file, corrupt or truncated? ({reason})"
        ) from None


def _array_chunks(origin: str, arrays: Chunk, *, samples: int | None, seed: int):
    def chunks() -> Iterator[tuple[str, Chunk]]:
        yield origin, _subset(origin, arrays, samples=samples, seed=seed)

    return chunks


def _file_chunks(path: Path, inputs: Sequence[InputSpec], *, samples: int | None, seed: int):
    def chunks() -> Iterator[tuple[str, Chunk]]:
        yield str(path), _subset(str(path), _load_file(path, inputs), samples=samples, seed=seed)

    return chunks


def _dir_chunks(root: Path, inputs: Sequence[InputSpec], *, samples: int | None, seed: int):
    files = sorted(p for p in root.iterdir() if p.suffix in _SUFFIXES and p.is_file())
    if not files:
        raise CalibrationError(f"{root}: the directory holds no .npz or .npy files")

    def chunks() -> Iterator[tuple[str, Chunk]]:
        counts = [_sample_count(str(p), _load_file(p, inputs)) for p in files]
        keep = _chosen(sum(counts), samples=samples, seed=seed)
        start = 0
        for path, count in zip(files, counts, strict=True):
            local = keep[(keep >= start) & (keep < start + count)] - start
            start += count
            if local.size:
                yield str(path), {k: v[local] for k, v in _load_file(path, inputs).items()}

    return chunks


def _function_chunks(text: str, *, samples: int | None):
    function = _resolve_function(text)

    def chunks() -> Iterator[tuple[str, Chunk]]:
        left = samples
        for i, item in enumerate(_iterate(_call(function, text), text)):
            if not isinstance(item, Mapping):
                raise CalibrationError(
                    f"{text}: item {i} is a {type(item).__name__}, expected a dict of arrays"
                )
            chunk = {k: np.asarray(v) for k, v in item.items()}
            if left is not None:
                chunk = {k: v[:left] for k, v in chunk.items()}
                left -= _sample_count(f"{text} item {i}", chunk)
            yield f"{text} item {i}", chunk
            if left is not None and left <= 0:
                return

    return chunks


def _resolve_function(text: str) -> Callable[[], Iterable]:
    target, _, attr = text.rpartition(":")
    if target.endswith(".py"):
        try:
            module = import_python_file(Path(target))
        except ModelLoadError as exc:
            raise CalibrationError(f"{text}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise CalibrationError(f"{text}: cannot import {target!r}: {exc}") from None
        except Exception as exc:  # the user's module raised while being imported
            raise CalibrationError(
                f"{text}: importing {target!r} failed: {type(exc).__name__}: {first_line(exc)}"
            ) from exc
    function = getattr(module, attr, None)
    if not callable(function):
        raise CalibrationError(f"{text}: {target!r} has no callable {attr!r}")
    return function


def _call(function: Callable[[], Iterable], text: str) -> Iterable:
    try:
        result = function()
    except Exception as exc:
        raise CalibrationError(
            f"{text}: calling it failed: {type(exc).__name__}: {first_line(exc)}"
        ) from exc
    if isinstance(result, Mapping):
        return [result]
    if not isinstance(result, Iterable):
        raise CalibrationError(
            f"{text}: returned a {type(result).__name__}, expected dicts of arrays"
        )
    return result


def _iterate(items: Iterable, text: str) -> Iterator:
    """The user's items; an error raised while producing one becomes a CalibrationError."""
    try:
        iterator = iter(items)
    except Exception as exc:
        raise CalibrationError(
            f"{text}: iterating it failed: {type(exc).__name__}: {first_line(exc)}"
        ) from exc
    index = 0
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            raise CalibrationError(
                f"{text}: producing item {index} failed: {type(exc).__name__}: {first_line(exc)}"
            ) from exc
        yield item
        index += 1


def _sample_count(origin: str, chunk: Chunk) -> int:
    counts = {k: (v.shape[0] if v.ndim else -1) for k, v in chunk.items()}
    if not counts:
        raise CalibrationError(f"{origin}: holds no arrays")
    if len(set(counts.values())) != 1 or -1 in counts.values():
        raise CalibrationError(
            f"{origin}: arrays disagree on the sample count (first axis): {counts}"
        )
    return next(iter(counts.values()))


def _chosen(total: int, *, samples: int | None, seed: int) -> np.ndarray:
    if samples is None or samples >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).permutation(total)[:samples])


def _subset(origin: str, chunk: Chunk, *, samples: int | None, seed: int) -> Chunk:
    keep = _chosen(_sample_count(origin, chunk), samples=samples, seed=seed)
    if samples is None or len(keep) == _sample_count(origin, chunk):
        return chunk
    return {k: v[keep] for k, v in chunk.items()}


def _split(
    origin: str, chunk: Chunk, batch_size: int, inputs: Sequence[InputSpec]
) -> Iterator[Batch]:
    _check_names(origin, chunk, inputs)
    total = _sample_count(origin, chunk)
    labels = chunk.get(LABELS_KEY)
    if labels is not None:
        labels = check_labels(labels, what=origin)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        feeds = {s.name: np.ascontiguousarray(chunk[s.name][start:stop]) for s in inputs}
        batch_labels = None if labels is None else labels[start:stop]
        yield Batch(feeds, f"{origin} samples {start}..{stop - 1}", batch_labels)


def check_labels(
    labels, *, what: str, samples: int | None = None, classes: int | None = None
) -> np.ndarray:
    """`labels` (numpy or a CPU tensor) as int64 class ids, else a one-line CalibrationError
    naming `what`.

    The one label rule of every labelled set: quantize's eval data, pruning's training and eval
    data, the pipelines' eval data. A 1-D array, one integer class id per sample (`samples`,
    when given), each >= 0 and below `classes` (the width of the model's first output) when
    that is known. Whole-number floats (3.0, as a float array saved by hand holds them) are the
    class ids they spell and are accepted; fractional, non-finite, boolean or non-numeric
    values and one-hot rows are refused, not guessed at.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise CalibrationError(
            f"{what}: {LABELS_KEY!r} has shape {list(labels.shape)}; expected 1-D class ids, "
            "one per sample (for one-hot labels save labels.argmax(axis=1))"
        )
    if samples is not None and len(labels) != samples:
        raise CalibrationError(
            f"{what}: arrays disagree on the number of samples: {len(labels)} {LABELS_KEY!r} "
            f"for {samples} samples; expected one label per sample"
        )
    ids = _class_ids(labels, what=what)
    if not ids.size:
        return ids
    low, high = int(ids.min()), int(ids.max())
    if low < 0 and classes is None:
        raise CalibrationError(f"{what}: label {low} is negative; expected class ids 0..N-1")
    if low < 0 or (classes is not None and high >= classes):
        bad = low if low < 0 else high
        raise CalibrationError(
            f"{what}: label {bad} is out of range: the model has {classes} classes, labels must "
            f"be 0..{classes - 1} (1-based labels? subtract 1)"
        )
    return ids


def _class_ids(labels: np.ndarray, *, what: str) -> np.ndarray:
    """`labels` as int64 when every value is a whole number of an integer or float dtype."""
    if np.issubdtype(labels.dtype, np.integer):
        return labels.astype(np.int64, copy=False)
    if np.issubdtype(labels.dtype, np.floating):
        fractional = ~np.isfinite(labels) | (labels != np.round(labels))
        if not fractional.any():
            return labels.astype(np.int64)
        reason = f"{labels[fractional][0]} is not a whole number"
    else:
        reason = f"e.g. {labels[:1].tolist()}"
    raise CalibrationError(
        f"{what}: {LABELS_KEY!r} has dtype {labels.dtype}; expected integer class ids "
        f"({reason}; save labels.astype(np.int64) once they are ids)"
    )


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max equals the label."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"top-1 accuracy: logits {list(logits.shape)} and labels {list(labels.shape)} "
            "do not fit; expected [N, classes] and [N]"
        )
    if labels.shape[0] == 0:
        raise ConfigError("top-1 accuracy: no samples")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def _padded(batch: Batch, size: int) -> Batch:
    """`batch` filled up to `size` rows by repeating its first sample."""
    fill = size - batch.size
    feeds = {
        name: np.ascontiguousarray(np.concatenate([value, np.repeat(value[:1], fill, axis=0)]))
        for name, value in batch.feeds.items()
    }
    origin = f"{batch.origin} (+{fill} padding rows)"
    return Batch(feeds, origin, batch.labels, batch.padding + fill)


def _check_names(origin: str, chunk: Chunk, inputs: Sequence[InputSpec]) -> None:
    expected = {s.name for s in inputs}
    missing = sorted(expected - set(chunk))
    extra = sorted(set(chunk) - expected - {LABELS_KEY})
    if missing or extra:
        raise CalibrationError(
            f"{origin}: inputs do not match the model: missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}; the model takes {sorted(expected)}"
            + (f" (plus optional {LABELS_KEY!r})" if extra else "")
        )


def _check_batch(batch: Batch, inputs: Sequence[InputSpec]) -> None:
    for spec in inputs:
        value = batch.feeds[spec.name]
        where = f"{batch.origin}: input {spec.name!r}"
        if value.dtype != spec.np_dtype:
            raise CalibrationError(f"{where}: dtype {value.dtype} given, {spec.dtype} expected")
        if not spec.matches(value.shape):
            raise CalibrationError(
                f"{where}: shape {list(value.shape)} given, {spec.symbolic_shape} expected"
            )
        if np.issubdtype(value.dtype, np.inexact):
            bad = ~np.isfinite(value)
            if bad.any():
                index = int(np.argwhere(bad)[0][0])
                kind = "NaN" if np.isnan(value).any() else "Inf"
                raise CalibrationError(
                    f"{where}: sample {index} of the batch holds {kind}; data must be finite"
                )
    _check_shared_dims(batch, inputs)


def _check_shared_dims(batch: Batch, inputs: Sequence[InputSpec]) -> None:
    """A symbolic dim named in several inputs (a[batch, seq], b[batch, seq]) has one size."""
    seen: dict[str, tuple[str, int, int]] = {}  # dim name -> (input, axis, size)
    for spec in inputs:
        shape = batch.feeds[spec.name].shape
        for axis, dim in spec.dynamic.items():
            if dim in seen and seen[dim][2] != shape[axis]:
                other, other_axis, size = seen[dim]
                raise CalibrationError(
                    f"{batch.origin}: dim {dim!r} is {size} in input {other!r} (axis "
                    f"{other_axis}) but {shape[axis]} in input {spec.name!r} (axis {axis}); "
                    "inputs sharing a dim name must agree within a batch"
                )
            seen.setdefault(dim, (spec.name, axis, shape[axis]))


def _update_digest(digest, batch: Batch) -> None:
    """Hash sample by sample, so the digest does not depend on how samples were batched."""
    names = sorted(batch.feeds)
    for i in range(batch.samples):
        for name in names:
            value = batch.feeds[name]
            digest.update(f"{name}:{value.dtype.str}:{value.shape[1:]}".encode())
            digest.update(np.ascontiguousarray(value[i]).tobytes())


def _dynamic_batch(inputs: Sequence[InputSpec]) -> bool:
    return bool(inputs) and all(s.shape and 0 in s.dynamic for s in inputs)


def _batch_size_for(inputs: Sequence[InputSpec]) -> int:
    """Dynamic batch axis: batches of 32; a fixed axis 0: that size."""
    if _dynamic_batch(inputs):
        return _DEFAULT_BATCH
    if inputs and inputs[0].shape:
        return max(inputs[0].shape[0], 1)  # a fixed axis of 0: the shape check refuses data
    return 1
