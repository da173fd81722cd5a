"""Which submodule broke: pruning a model it cannot handle fails deep inside a forward pass
(attention reshapes, layer norms sized to the unpruned width). The user gets the module's name
and a way out (--ignore it), not a RuntimeError from the middle of transformers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from torchship.errors import ExportError, ToolchainError, first_line
from torchship.interrupts import reraise_interrupt

__all__ = ["run_blaming"]

T = TypeVar("T")


def run_blaming(module: nn.Module, call: Callable[[], T], *, what: str) -> T:
    """`call()`; an exception raised inside a forward pass of `module` becomes an ExportError
    naming the innermost submodule that was running, with its type."""
    names = {m: n for n, m in module.named_modules()}
    running: list[nn.Module] = []
    failed: list[nn.Module] = []

    def enter(mod, args):
        running.append(mod)

    def leave(mod, args, out):
        if running and running[-1] is mod:
            running.pop()

    handles = [m.register_forward_pre_hook(enter) for m in names]
    handles += [m.register_forward_hook(leave) for m in names]
    try:
        return call()
    except ToolchainError:
        raise
    except Exception as exc:
        reraise_interrupt(exc)
        failed.extend(running[-1:])
        where = _describe(names, failed[0]) if failed else "the model"
        raise ExportError(
            f"{what} broke {where}: {first_line(exc, limit=200)}; {_way_out(names, failed)}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()


def _way_out(names: dict[nn.Module, str], failed: list[nn.Module]) -> str:
    layers = [
        names[m]
        for m in (failed[0].modules() if failed else ())
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and names.get(m)
    ]
    if layers and len(layers) <= 8:
        return f"keep it whole with --ignore {','.join(layers)}"
    return "keep the layers that feed it whole with --ignore NAME,..."


def _describe(names: dict[nn.Module, str], mod: nn.Module) -> str:
    name = names.get(mod, "") or "<root>"
    return f"module {name!r} ({type(mod).__name__})"
