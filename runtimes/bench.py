"""Benchmark one artifact on one runtime: cold start, latency samples, stats, fingerprints.

Results stay typed (`BenchResult`, `BenchDocument`) until a writer calls `to_dict()`; on disk they
are JSON documents of schema `torchship.bench/1` (docs/design.md, "Bench result").
"""

from __future__ import annotations

import datetime
import gc
import json
import logging
import resource
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from torchship.artifact import Artifact
from torchship.errors import ConfigError
from torchship.fingerprint import fingerprint_key, machine_fingerprint, software_fingerprint
from torchship.runtimes.base import Runner, default_runtime_for, get_runner, require_available
from torchship.runtimes.stats import HIGH_CV, Stats
from torchship.runtimes.timing import HostTimer, Timer, measure, time_cold_start
from torchship.specs import random_feeds

__all__ = [
    "BENCH_SCHEMA",
    "BenchConfig",
    "BenchResult",
    "BenchDocument",
    "bench_runner",
    "bench_many",
    "bench_document",
    "load_bench_document",
    "feeds_for_batch",
    "runner_timer",
]

log = logging.getLogger(__name__)

BENCH_SCHEMA = "torchship.bench/1"
#: What every `results[]` entry of a document holds; the other fields may be left out.
_RESULT_KEYS = ("runtime", "artifact", "sha256", "batch", "latency_ms", "samples_ms")


@dataclass(frozen=True)
class BenchConfig:
    """How to time. `iters` fixes the sample count; else time for `min_time_s` (<= max_iters)."""

    warmup: int = 10
    iters: int | None = None
    min_time_s: float | None = 1.0
    max_iters: int | None = 10_000
    batches: tuple[int, ...] = (1,)
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", tuple(self.batches))
        if not self.batches or any(b < 1 for b in self.batches):
            raise ConfigError(f"batches must be positive integers, got {list(self.batches)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup}")
        if self.iters is None and self.min_time_s is None:
            raise ConfigError("give iters or min_time_s to bound the timing loop")


@dataclass(frozen=True, kw_only=True)
class BenchResult:
    """One `results[]` entry of a `torchship.bench/1` document.

    `latency_ms` summarises the timed clock (`timing["clock"]`): host wall time of each call on
    CPU runtimes; on GPU runners device time between CUDA events, copies excluded
    (`timing["includes_copies"]` false). `throughput_per_s` is batch / mean of `latency_ms`, so
    on a GPU it is compute throughput. GPU results also carry `host_latency_ms`: the host wall
    time of each whole call, copies included (end to end); CPU results, whose `latency_ms` is
    already host time, leave it out.

    `bench_runner` fills every field. A result read from a document needs only the keys in
    `_RESULT_KEYS`; a hand-written or trimmed document may leave the rest out (None, precision
    fp32). The samples are kept as written: `torchship.regression` checks them when it compares.
    """

    runtime: str
    artifact: str
    sha256: str
    format: str | None = None
    precision: str = "fp32"
    batch: int
    threads: int | None = None
    latency_ms: dict[str, float]
    throughput_per_s: float | None = None
    cold_start_ms: float | None = None
    #: The process's peak resident set so far (ru_maxrss), not this runtime's own footprint.
    peak_rss_mb: float | None = None
    samples_ms: list[float]
    warmup: int | None = None
    iters: int | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    host_latency_ms: dict[str, float] | None = None
    #: What the backend chose for the run (`Runner.facts()`, e.g. OpenVINO's precision).
    runtime_facts: dict[str, Any] = field(default_factory=dict)

    @property
    def stats(self) -> Stats:
        return Stats.from_dict(self.latency_ms)

    @property
    def p50_ms(self) -> float:
        return float(self.latency_ms["p50"])

    @property
    def p90_ms(self) -> float:
        return float(self.latency_ms["p90"])

    @property
    def p99_ms(self) -> float:
        return float(self.latency_ms["p99"])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["host_latency_ms"] is None:
            del data["host_latency_ms"]  # CPU results keep their schema
        if not data["runtime_facts"]:
            del data["runtime_facts"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchResult:
        missing = _missing_result_keys(data)
        if missing:
            raise ConfigError(f"bench result is missing {', '.join(missing)}")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _missing_result_keys(data: object) -> list[str]:
    return [k for k in _RESULT_KEYS if not isinstance(data, Mapping) or k not in data]


@dataclass(frozen=True)
class BenchDocument:
    """A `torchship.bench/1` document: results and the machine + software that measured them.

    `fingerprint` is `fingerprint_key(machine, software)`: results are comparable across
    documents with the same one. `created` is an ISO 8601 UTC time. A document read from a file
    may lack both (None) and the machine and software facts ({}).
    """

    schema: ClassVar[str] = BENCH_SCHEMA

    results: tuple[BenchResult, ...]
    machine: dict[str, Any] = field(default_factory=dict)
    software: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    created: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "results", tuple(self.results))

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: schema, creation time, fingerprint, machine, software, results."""
        return {
            "schema": self.schema,
            "created": self.created,
            "fingerprint": self.fingerprint,
            "machine": self.machine,
            "software": self.software,
            "results": [r.to_dict() for r in self.results],
        }

    @classmethod
    def from_dict(cls, data: object, *, source: str = "bench document") -> BenchDocument:
        """The document in `data`; ConfigError starting with `source` when it is not one."""
        schema = data.get("schema") if isinstance(data, Mapping) else None
        if schema != BENCH_SCHEMA:
            raise ConfigError(f"{source}: schema {schema!r} found, {BENCH_SCHEMA!r} expected")
        results = data.get("results")
        if not isinstance(results, list):
            raise ConfigError(f"{source}: 'results' must be a list")
        for i, entry in enumerate(results):
            missing = _missing_result_keys(entry)
            if missing:
                raise ConfigError(f"{source}: results[{i}] is missing {', '.join(missing)}")
        return cls(
            results=tuple(BenchResult.from_dict(entry) for entry in results),
            machine=data.get("machine") or {},
            software=data.get("software") or {},
            fingerprint=data.get("fingerprint"),
            created=data.get("created"),
        )


def bench_runner(
    runtime: str,
    artifact: Artifact,
    *,
    config: BenchConfig,
    batch: int,
    progress: Callable[[int], None] | None = None,
) -> BenchResult:
    """Load `artifact` on `runtime`, time cold start and `config`'s loop at `batch`, close it.

    `progress(n)` is called after each timed sample.
    """
    feeds = feeds_for_batch(artifact, batch=batch, seed=config.seed)
    runner = require_available(runtime)(artifact, threads=config.threads)
    timer = runner_timer(runner)
    try:
        cold_ms = time_cold_start(runner.load, lambda: runner.infer(feeds))
        samples = measure(
            runner.checked_call(feeds),  # feeds checked once here, not in every timed call
            warmup=config.warmup,
            iters=config.iters,
            min_time_s=config.min_time_s,
            max_iters=config.max_iters,
            timer=timer,
            progress=progress,
        )
        facts = runner.facts()
    finally:
        runner.close()
    stats = Stats.from_samples(samples)
    if stats.cv > HIGH_CV:
        log.warning(
            "%s on %s (batch %d): noisy timing, cv %.2f > %.2f; close other work or raise "
            "--min-time",
            runtime, artifact.path.name, batch, stats.cv, HIGH_CV,
        )  # fmt: skip
    host_samples = getattr(timer, "host_samples_ms", None)
    return BenchResult(
        runtime=runtime,
        artifact=str(artifact.path),
        sha256=artifact.sha256,
        format=artifact.format.value,
        precision=artifact.precision.value,
        batch=batch,
        threads=config.threads,
        latency_ms=stats.to_dict(),
        throughput_per_s=batch * 1e3 / stats.mean if stats.mean > 0 else 0.0,
        cold_start_ms=cold_ms,
        peak_rss_mb=_peak_rss_mb(),
        samples_ms=[round(s, 6) for s in samples],
        warmup=config.warmup,
        iters=len(samples),
        timing={"clock": timer.clock, "includes_copies": _includes_copies(runner)},
        host_latency_ms=Stats.from_samples(host_samples).to_dict() if host_samples else None,
        runtime_facts=facts,
    )


def bench_many(
    artifacts: Sequence[Artifact],
    *,
    runtimes: Sequence[str] | None = None,
    config: BenchConfig,
    progress: Callable[[int], None] | None = None,
) -> list[BenchResult]:
    """Every artifact x runtime x batch. Without `runtimes`, each artifact's default runtime.

    Pairs whose runtime cannot run the artifact's format are skipped; an artifact that no
    requested runtime can run is a ConfigError.
    """
    results = []
    for artifact in artifacts:
        names = _runtimes_for(artifact, runtimes)
        for name in names:
            for batch in config.batches:
                results.append(
                    bench_runner(name, artifact, config=config, batch=batch, progress=progress)
                )
                gc.collect()  # release the session before the next one is timed
    return results


def bench_document(results: Sequence[BenchResult]) -> BenchDocument:
    """`results` with this machine's and software's facts and the time, as one document."""
    machine, software = machine_fingerprint(), software_fingerprint()
    return BenchDocument(
        results=tuple(results),
        machine=machine,
        software=software,
        fingerprint=fingerprint_key(machine, software),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def load_bench_document(path: str | Path) -> BenchDocument:
    """Read a bench JSON file; ConfigError naming the file when it is not `torchship.bench/1`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read bench results ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    return BenchDocument.from_dict(data, source=str(path))


def feeds_for_batch(artifact: Artifact, *, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random feeds for `artifact` at `batch`; ConfigError naming an input whose batch is fixed.

    The batch applies to inputs with a batch axis (axis 0); scalar inputs stay scalars.
    """
    specs = artifact.inputs
    batched = [s for s in specs if s.shape]
    if not batched:
        if batch != 1:
            raise ConfigError(
                f"no input has a batch axis (inputs: {', '.join(s.name for s in specs) or 'none'}"
                f"), so batch {batch} cannot apply; bench --batch 1"
            )
        return random_feeds(specs, seed=seed)
    for spec in batched:
        if spec.shape[0] != batch and 0 not in spec.dynamic:
            raise ConfigError(
                f"input {spec.name!r}: batch {batch} requested but axis 0 is fixed at "
                f"{spec.shape[0]}; export with --dynamic-batch or bench --batch {spec.shape[0]}"
            )
    return random_feeds(specs, seed=seed, batch=batch)


def _runtimes_for(artifact: Artifact, runtimes: Sequence[str] | None) -> list[str]:
    if not runtimes:
        return [default_runtime_for(artifact.format)]
    names = [n for n in runtimes if artifact.format in get_runner(n).formats]
    if not names:
        raise ConfigError(
            f"{artifact.path.name}: none of the runtimes {', '.join(runtimes)} runs a "
            f"{artifact.format.value} artifact"
        )
    return names


def runner_timer(runner: Runner) -> Timer:
    """The timer for `runner`: its own `make_timer()` when it has one, else the host clock.

    GPU runners time CUDA events on their own stream that way; CPU runners use `HostTimer`.
    """
    make_timer = getattr(runner, "make_timer", None)
    return make_timer() if callable(make_timer) else HostTimer()


def _includes_copies(runner: Runner) -> bool:
    # Host wall time of infer() covers numpy<->tensor/device copies; a GPU runner may say not.
    return bool(getattr(runner, "timing_includes_copies", True))


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return round(peak / (1024**2 if sys.platform == "darwin" else 1024), 1)
