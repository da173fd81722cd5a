"""AOTInductor: compile a torch.export program to a native `.aoti.pt2` package, cached.

Compiling takes about a minute even for a small model, so packages are cached under
`<cache>/aoti/` by a hash of what decides the generated code: the serialized program (graph,
weights, dynamic dims), torch's version, the kernels' thread count and the CPU's ISA flags. A
package hit is copied, not recompiled; the artifact reports the compile time either way.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from torchship.artifact import AOTI_SUFFIX, Artifact, Format, Precision
from torchship.errors import BackendUnavailableError, first_line
from torchship.exporter.base import EXPORTERS, ExportOptions, quiet_torch
from torchship.exporter.exported_program import to_exported_program
from torchship.files import atomic_path, atomic_write_json
from torchship.fingerprint import machine_fingerprint
from torchship.loaded import LoadedModel, flatten_outputs, to_torch_inputs
from torchship.runtimes.compare import compare_output
from torchship.runtimes.tensorrt.cache import cache_root
from torchship.runtimes.tolerance import tolerance_for
from torchship.specs import random_feeds

__all__ = ["AotiBuild", "compiler_unavailable_reason", "compile_aoti", "export_aoti"]

log = logging.getLogger(__name__)

#: A frozen package must keep this profile (cosine >= 0.99) with its program on the example.
_FROZEN_PROFILE = tolerance_for("int8")


@dataclass(frozen=True)
class AotiBuild:
    """What a compile produced: seconds it took (when first built), threads, cache key, hit."""

    compile_s: float
    threads: int
    key: str
    cache_hit: bool
    frozen: bool = True

    def details(self) -> dict:
        return {
            "compiler": "aotinductor",
            "compile_s": round(self.compile_s, 2),
            "compiled_threads": self.threads,
            "cache_key": self.key,
            "cache_hit": self.cache_hit,
            "frozen": self.frozen,
        }


def compiler_unavailable_reason() -> str | None:
    """None when inductor finds a C++ compiler here, else why not (AOTInductor needs one)."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as exc:  # inductor raises its own InvalidCxxCompiler
        return f"no C++ compiler for AOTInductor ({first_line(exc)}); install g++ or set CXX"
    return None


def compile_aoti(
    program: torch.export.ExportedProgram,
    path: Path,
    *,
    threads: int | None = None,
    frozen: bool = True,
) -> AotiBuild:
    """Write `program` compiled by AOTInductor to `path` (atomically), from the cache if built.

    `frozen` lets inductor fold weights into constants (see `_compile`). BackendUnavailableError
    when there is no C++ compiler.
    """
    threads = threads or torch.get_num_threads()
    key = _cache_key(program, threads, frozen)
    folder = cache_root() / "aoti"
    cached, meta = folder / f"{key}{AOTI_SUFFIX}", folder / f"{key}.json"
    hit = cached.is_file() and meta.is_file()
    if not hit:
        reason = compiler_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"aoti: {reason}")
        compile_s = _compile(program, cached, threads=threads, frozen=frozen)
        atomic_write_json(meta, {"compile_s": compile_s, "threads": threads})
    else:
        compile_s = float(json.loads(meta.read_text())["compile_s"])
        log.info("aoti: cache hit %s (compiled in %.1f s)", key, compile_s)
    with atomic_path(path, suffix=AOTI_SUFFIX) as tmp:
        shutil.copyfile(cached, tmp)
    return AotiBuild(compile_s, threads, key, hit, frozen)


def _compile(
    program: torch.export.ExportedProgram, target: Path, *, threads: int, frozen: bool
) -> float:
    import torch._inductor.config as inductor_config

    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # freezing folds weights into constants so inductor can fold BatchNorm and pre-pack them
    # for oneDNN (the INT8 PT2E path depends on it); cpp.threads fixes the OpenMP kernels'
    # thread count. Inductor freezes only with grad off: compiled with grad on, the package
    # kept BatchNorm and plain aten convolutions, and ran 0.59x FP32 ORT on the ResNet-18-style
    # net where it runs 0.77x frozen (docs/design.md, "AOTInductor").
    patch = {"freezing": frozen, "cpp.threads": threads}
    with atomic_path(target, suffix=AOTI_SUFFIX) as tmp, quiet_torch():
        with inductor_config.patch(patch), torch.no_grad():
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
    seconds = time.perf_counter() - start
    log.info("aoti: compiled %s in %.1f s (%d threads)", target.name, seconds, threads)
    return seconds


def _cache_key(program: torch.export.ExportedProgram, threads: int, frozen: bool) -> str:
    buffer = io.BytesIO()
    with quiet_torch():
        torch.export.save(program, buffer)
    isa = machine_fingerprint().get("isa", {})
    frozen_as = "no-grad" if frozen else False
    identity = {"torch": torch.__version__, "threads": threads, "isa": isa, "frozen": frozen_as}
    digest = hashlib.sha256(buffer.getvalue())
    digest.update(json.dumps(identity, sort_keys=True).encode())
    return digest.hexdigest()[:32]


@EXPORTERS.register("aoti")
def export_aoti(model: LoadedModel, path: Path, *, options: ExportOptions) -> Artifact:
    """Write a `.aoti.pt2` AOTInductor package, dynamic along the dims the specs name.

    The frozen package is checked on the example input against the program it was compiled
    from; when inductor's frozen lowering computes something else (its INT8 convolution with a
    residual add did on the demo: cosine 0.01), the program is compiled unfrozen instead and
    the details say why.
    """
    program = to_exported_program(model)
    build = compile_aoti(program, path, threads=options.threads)
    details = build.details()
    mismatch = _frozen_mismatch(model, path)
    if mismatch is not None:
        log.warning("aoti: the frozen package %s; compiling it unfrozen (slower)", mismatch)
        build = compile_aoti(program, path, threads=options.threads, frozen=False)
        details = {**build.details(), "unfrozen_because": mismatch}
    return Artifact.create(
        path,
        format=Format.AOTI,
        inputs=model.inputs,
        outputs=model.outputs,
        precision=Precision.FP32,
        details=details,
    )


def _frozen_mismatch(model: LoadedModel, path: Path) -> str | None:
    """None when the package at `path` computes what `model` does on its example, else how not.

    Cosine only (the INT8 profile): the program may itself be a PT2E INT8 one, and the check is
    for a wrong lowering, not for rounding.
    """
    from torch._inductor import aoti_load_package

    feeds = model.example or random_feeds(model.inputs, seed=0)
    args = to_torch_inputs(model.inputs, feeds)
    with torch.no_grad(), quiet_torch():
        arrays = flatten_outputs(aoti_load_package(str(path))(*args))
    # not strict: an output the package does not return fails the comparison as "missing"
    got = dict(zip(model.outputs, arrays, strict=False))
    want = model.run(feeds)
    for name in model.outputs:
        expected = np.asarray(want[name])
        if not np.issubdtype(expected.dtype, np.inexact):
            continue  # an argmax may flip on a near tie after INT8 rounding: not a lowering bug
        c = compare_output(
            "example", name, expected, got, _FROZEN_PROFILE, reference_name="the program"
        )
        if not c.passed:
            how = c.reason or (
                f"with {c.nonfinite_mismatches} non-finite values"
                if c.nonfinite_mismatches
                else f"at cosine {c.cosine:.4f}"
            )
            return f"computed {name} {how} vs the program on the example input"
    return None
