"""Implicit INT8 calibration run by TensorRT itself (releases that still have it: 8.6-10.x).

Batches come from torchship's calibration readers (`torchship.data.open_data`:
.npz/.npy files, directories of them, `module:function`), streamed one batch at a time, so
only the current batch lives on the GPU. The calibration cache TensorRT writes is kept and
handed back on later builds, which then skip calibration.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from torchship.data import open_data
from torchship.errors import CalibrationError, ConfigError
from torchship.files import atomic_path, sha256_file
from torchship.runtimes.tensorrt.builder import ShapeRange
from torchship.runtimes.tensorrt.compat import CALIBRATOR_CLASSES
from torchship.specs import InputSpec

__all__ = ["DEFAULT_CALIB_BATCH", "calibration_batch", "data_identity", "make_calibrator"]

log = logging.getLogger(__name__)

#: Batch size fed to TensorRT's calibrator when the batch axis is dynamic.
DEFAULT_CALIB_BATCH = 8

Feeds = dict[str, np.ndarray]


def calibration_batch(profiles: Sequence[ShapeRange], requested: int | None) -> int:
    """The calibration batch: `requested` (or 8) within the profile's batch range."""
    first = profiles[0]
    low, high = first.min[0], first.max[0]
    if low == high:
        if requested not in (None, low):
            raise ConfigError(f"--calib-batch {requested}: the model's batch is fixed at {low}")
        return low
    wanted = requested or DEFAULT_CALIB_BATCH
    if requested is not None and not low <= requested <= high:
        raise ConfigError(
            f"--calib-batch {requested}: outside the profile's batch range {low}..{high}"
        )
    return min(max(wanted, low), high)


def data_identity(source: str | Path) -> str:
    """A hash naming the calibration data (file contents, or a directory's files, or the text)."""
    path = Path(source)
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(sha256_file(path).encode())
    elif path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{child.relative_to(path)}:{sha256_file(child)}".encode())
    else:
        digest.update(str(source).encode())
    return digest.hexdigest()


def make_calibrator(
    trt: Any,
    *,
    method: str,
    source: str | Path,
    specs: Sequence[InputSpec],
    batch: int,
    samples: int | None,
    cache_path: Path,
    upload: Callable[[np.ndarray], Any] | None = None,
) -> Any:
    """A `trt.IInt8EntropyCalibrator2`/`IInt8MinMaxCalibrator` fed from `source`.

    `input_shapes` on the result gives the shapes of every batch (for the calibration profile);
    `input_dtypes` (set by the builder from the parsed network) is what each input is cast to
    before upload; `error` holds an exception raised while feeding, which TensorRT would swallow.
    """
    base = getattr(trt, CALIBRATOR_CLASSES[method])
    batches = _full_batches(_open(source, specs, batch=batch, samples=samples), batch)
    first = next(batches, None)
    if first is None:
        raise CalibrationError(f"{source}: fewer than {batch} samples, one calibration batch")
    send = upload or _cuda_upload
    shapes = {name: tuple(array.shape) for name, array in first.items()}
    stream = itertools.chain([first], batches)

    class TorchshipCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.input_shapes = shapes
            self.input_dtypes: dict[str, np.dtype] = {}
            self.batches_fed = 0
            self.error: BaseException | None = None
            self._held: list[Any] = []

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str], *_: Any) -> list[int] | None:
            try:
                feeds = next(stream, None)
                if feeds is None:
                    return None
                # 8.6 parses int64 ONNX inputs as int32: upload what the network takes.
                self._held = [
                    send(np.ascontiguousarray(feeds[n], dtype=self.input_dtypes.get(n)))
                    for n in names
                ]
            except BaseException as exc:  # inside TensorRT's C++ loop (Ctrl-C too): for later
                self.error = exc
                return None
            self.batches_fed += 1
            return [int(t.data_ptr()) for t in self._held]

        def read_calibration_cache(self, *_: Any) -> bytes | None:
            if cache_path.is_file():
                log.info("tensorrt: reusing calibration cache %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any, *_: Any) -> None:
            with atomic_path(cache_path) as tmp:
                tmp.write_bytes(bytes(memoryview(cache)))
            log.info("tensorrt: wrote calibration cache %s", cache_path)

    return TorchshipCalibrator()


def _open(source: str | Path, specs: Sequence[InputSpec], *, batch: int, samples: int | None):
    """Batches of feeds from torchship's calibration readers."""
    data = open_data(source, inputs=specs, samples=samples, batch_size=batch)
    return (b.feeds for b in data.batches())


def _full_batches(batches: Iterator[Feeds], batch: int) -> Iterator[Feeds]:
    """Only batches of exactly `batch` samples: TensorRT calibrates at one fixed shape."""
    for feeds in batches:
        size = len(next(iter(feeds.values())))
        if size == batch:
            yield feeds
        else:
            log.info("tensorrt: calibration skips a last partial batch of %d samples", size)


def _cuda_upload(array: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(array).to("cuda")
