"""Export parity: an artifact in its runtime against eager PyTorch, through the comparator."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from torchship.artifact import Artifact
from torchship.errors import ParityError
from torchship.loaded import LoadedModel, eval_mode
from torchship.runtimes.base import default_runtime_for, get_runner
from torchship.runtimes.compare import ParityReport, compare_runs
from torchship.runtimes.tolerance import ToleranceProfile, tolerance_for
from torchship.specs import InputSpec, random_feeds

__all__ = ["check_parity", "require_parity"]

log = logging.getLogger(__name__)


def check_parity(
    model: LoadedModel,
    artifact: Artifact,
    *,
    runtime: str | None = None,
    num_random: int = 3,
    seed: int = 0,
    profile: ToleranceProfile | None = None,
) -> ParityReport:
    """Compare `artifact` (run in `runtime`, default for its format) with eager `model`.

    Cases: the example input, `num_random` random inputs, and one input with other sizes for
    every dynamic dim (e.g. another batch size) when the specs have dynamic dims.
    """
    runtime = runtime or default_runtime_for(artifact.format)
    profile = profile or tolerance_for(get_runner(runtime).computes_in or artifact.precision.value)
    eval_mode(model.module)
    report = compare_runs(
        artifact,
        _cases(model, num_random=num_random, seed=seed),
        runtime=runtime,
        reference=model.run,
        outputs=model.outputs,
        profile=profile,
        reference_name="eager",
    )
    log.info(report.message())
    return report


def require_parity(
    model: LoadedModel,
    artifact: Artifact,
    *,
    runtime: str | None = None,
    num_random: int = 3,
    seed: int = 0,
    profile: ToleranceProfile | None = None,
) -> ParityReport:
    """`check_parity`, raising ParityError (one line naming output, case and errors) on failure."""
    report = check_parity(
        model, artifact, runtime=runtime, num_random=num_random, seed=seed, profile=profile
    )
    if not report.passed:
        raise ParityError(report.message())
    return report


def _cases(model: LoadedModel, *, num_random: int, seed: int):
    yield "example input", model.example
    for i in range(num_random):
        yield f"random input #{i + 1}", random_feeds(model.inputs, seed=seed + 1 + i)
    resized = _resized_specs(model.inputs, model.example)
    if resized is not None:
        specs, label = resized
        yield f"{label} input", random_feeds(specs, seed=seed + 1 + num_random)


def _resized_specs(
    specs: tuple[InputSpec, ...], example: dict[str, np.ndarray]
) -> tuple[list[InputSpec], str] | None:
    """Specs with every dynamic dim at another size than in the example (at least 3)."""
    sizes: dict[str, int] = {}
    for spec in specs:
        for axis, name in spec.dynamic.items():
            sizes.setdefault(name, max(3, np.shape(example[spec.name])[axis] + 1))
    if not sizes:
        return None
    resized = [
        replace(
            spec,
            shape=tuple(
                sizes.get(spec.dynamic.get(i, ""), d)
                for i, d in enumerate(np.shape(example[spec.name]))
            ),
        )
        for spec in specs
    ]
    return resized, " ".join(f"{name}={size}" for name, size in sizes.items())
