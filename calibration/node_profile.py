"""Per-node latency from ONNX Runtime's profiler, attributed to the FP32 graph's nodes.

ORT renames what it fuses (`/stem/stem.0/Conv_token_1` for a QLinearConv made from a QDQ
Conv, `<tensor>_QuantizeLinear` for a Q/DQ node the quantizer inserted) and inserts nodes of
its own (layout Transposes, reorders). Kernel time is matched to the FP32 node whose name is
the longest `_`-separated prefix of the profiled name; Q/DQ time to the node producing the
quantized tensor; the rest stays in `other` so that no time disappears.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchship.onnx_scopes import NodeOrigin

__all__ = ["NodeTimes", "profile_nodes"]

log = logging.getLogger(__name__)

_QDQ_SUFFIXES = ("_QuantizeLinear", "_DequantizeLinear")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
_TOKEN = re.compile(r"_token_\d+$")


@dataclass(frozen=True)
class NodeTimes:
    """Mean kernel microseconds per run: by FP32 node name, Q/DQ by the node whose output
    they quantize, and ORT's own nodes (by profiled name) in `other`."""

    compute_us: dict[str, float] = field(default_factory=dict)
    qdq_us: dict[str, float] = field(default_factory=dict)
    other_us: dict[str, float] = field(default_factory=dict)
    runs: int = 0

    @property
    def total_us(self) -> float:
        return (
            sum(self.compute_us.values()) + sum(self.qdq_us.values()) + sum(self.other_us.values())
        )


def profile_nodes(
    path: Path,
    feeds: Mapping[str, np.ndarray],
    *,
    nodes: Mapping[str, NodeOrigin],
    tensors: Mapping[str, NodeOrigin],
    scratch: Path,
    runs: int = 5,
    warmup: int = 2,
    threads: int | None = None,
) -> NodeTimes:
    """Run `path` (ORT CPU, full graph optimization, as deployed) with the profiler on and
    return the kernel time of the last `runs` runs, averaged. `nodes` are the FP32 nodes by
    name, `tensors` their outputs' producers; `scratch` receives the profiler's JSON."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(scratch / f"profile-{path.stem}")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    for _ in range(warmup + runs):
        session.run(None, dict(feeds))
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    return _attribute(_last_runs(events, runs), nodes, tensors, runs)


def _last_runs(events: Sequence[dict], runs: int) -> list[dict]:
    """The node events inside the last `runs` `model_run` windows (warm-up runs left out)."""
    windows = [
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    ][-runs:]
    if not windows:
        return []
    start = windows[0][0]
    return [
        e
        for e in events
        if e.get("cat") == "Node"
        and str(e.get("name", "")).endswith("_kernel_time")
        and e["ts"] >= start
    ]


def _attribute(
    events: Sequence[dict],
    nodes: Mapping[str, NodeOrigin],
    tensors: Mapping[str, NodeOrigin],
    runs: int,
) -> NodeTimes:
    times = NodeTimes(runs=runs)
    for event in events:
        name = _TOKEN.sub("", event["name"][: -len("_kernel_time")])
        micros = float(event.get("dur", 0)) / runs
        op = (event.get("args") or {}).get("op_name", "")
        base = next((name[: -len(s)] for s in _QDQ_SUFFIXES if name.endswith(s)), None)
        is_qdq = base is not None or op in _QDQ_OPS
        base = name if base is None else base
        # Q/DQ by tensor first: `<tensor>_QuantizeLinear` also starts with its producer's name.
        # Nodes ORT rewrote are named after a node (`<node>_token_3`) or a tensor (`<t>_nchwc`).
        owner = None if is_qdq else _prefix_in(base, nodes)
        if owner is None:
            tensor = _prefix_in(base, tensors)
            owner = tensors[tensor].node if tensor is not None else None
        if owner is None:
            _add(times.other_us, f"{name} ({op})" if op else name, micros)
        else:
            _add(times.qdq_us if is_qdq else times.compute_us, owner, micros)
    return times


def _prefix_in(name: str, names: Mapping[str, object]) -> str | None:
    """The key of `names` that is `name` or its longest `_`-separated prefix."""
    candidate = name
    while candidate:
        if candidate in names:
            return candidate
        if "_" not in candidate:
            return None
        candidate = candidate.rsplit("_", 1)[0]
    return None


def _add(table: dict[str, float], key: str, micros: float) -> None:
    table[key] = table.get(key, 0.0) + micros
