"""`torchship doctor`: what this machine can run and why not."""

from __future__ import annotations

from torchship.exporter.aoti import compiler_unavailable_reason
from torchship.fingerprint import machine_fingerprint, software_fingerprint
from torchship.runtimes.base import RUNNERS, _import_backends

__all__ = ["doctor_facts", "doctor_rows"]


def doctor_facts() -> dict:
    """Runtimes (available or why not), ORT providers, versions, CPU model and ISA, GPU."""
    _import_backends()
    runtimes = {}
    for name in RUNNERS:
        reason = RUNNERS.get(name).unavailable_reason()
        runtimes[name] = {"available": reason is None, "reason": reason}
    try:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    except ImportError:
        providers = []
    compiler = compiler_unavailable_reason()
    return {
        "runtimes": runtimes,
        # Running an AOTInductor package needs torch only; building one needs a C++ compiler.
        "aoti_compiler": {"available": compiler is None, "reason": compiler},
        "ort_providers": providers,
        "machine": machine_fingerprint(),
        "software": software_fingerprint(),
    }


def doctor_rows(facts: dict) -> dict[str, str]:
    """The facts as label -> text rows for the terminal."""
    machine, software = facts["machine"], facts["software"]
    rows = {
        "cpu": f"{machine.get('cpu_model')} ({machine.get('logical_cores')} logical cores)",
        "isa": ", ".join(f for f, on in machine.get("isa", {}).items() if on) or "none detected",
        "memory": f"{machine.get('memory_mb', 0) / 1024:.1f} GiB",
        "gpu": _gpu_text(machine.get("gpu")),
    }
    rows.update({name: version or "not installed" for name, version in software.items()})
    rows["ort providers"] = ", ".join(facts["ort_providers"]) or "none"
    for name, state in facts["runtimes"].items():
        rows[f"runtime {name}"] = "available" if state["available"] else f"no: {state['reason']}"
    compiler = facts.get("aoti_compiler") or {}
    if compiler:
        rows["aoti builds"] = "yes" if compiler["available"] else f"no: {compiler['reason']}"
    return rows


def _gpu_text(gpu) -> str:
    if not gpu:
        return "none"
    gpus = gpu if isinstance(gpu, list) else [gpu]
    return "; ".join(
        f"{g.get('name')} (cc {g.get('compute_capability')}, driver {g.get('driver')})"
        for g in gpus
    )
