"""A plan is a pipeline's configured steps; `run_plan` is the one runner for every pipeline.

`prepare` steps (load, prune) write nothing and run before the bundle folder is touched.
`build` steps write into a hidden staging folder that replaces the bundle only when every
step succeeded, so an interrupted or failed run leaves no bundle that looks finished (and the
previous one, if any, in place).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchship.files import atomic_dir, check_replaceable_dir
from torchship.pipeline.step import PipelineState, Step

__all__ = ["Plan", "run_plan"]


@dataclass(frozen=True)
class Plan:
    bundle_dir: Path
    prepare: tuple[Step, ...]
    build: tuple[Step, ...]

    @property
    def steps(self) -> tuple[Step, ...]:
        return (*self.prepare, *self.build)


def run_plan(
    plan: Plan,
    *,
    command: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> PipelineState:
    """Run every step of `plan` in order; the bundle is in place when this returns."""
    check_replaceable_dir(plan.bundle_dir)  # before any work
    state = PipelineState(
        bundle_dir=plan.bundle_dir,
        command=tuple(command) if command is not None else None,
        progress=progress or (lambda message: None),
    )
    for step in plan.prepare:
        step(state)
    with atomic_dir(plan.bundle_dir) as stage:
        state.stage = stage
        for step in plan.build:
            step(state)
    state.stage = None
    return state
