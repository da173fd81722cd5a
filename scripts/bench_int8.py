"""Benchmark (not a test): FP32 vs INT8 through ONNX Runtime for every preset and method.

For the demo (digits, labelled) and a ResNet-18-style CNN at 64x64 (seeded random weights,
accuracy = top-1 agreement with FP32 on held-out random images), batches 1 and 8, 2 threads,
one run. Prints a Markdown table, the CPU flags, and where the auto preset's INT8 time goes.

Then the nets where INT8 can run slower than FP32 (`--cases mobile`): a MobileNetV3-style net
(hardswish, hard-sigmoid squeeze-excite, depthwise) and an EfficientNet-style net (SiLU,
sigmoid squeeze-excite), trained for a few epochs on the shipped digits (3x64x64): FP32, the
old default (`--no-latency-search`), the latency-aware default, ORT's default S8S8 and the
hand-tuned U8S8 per-channel peer, at a 0.5-point budget, then torchship's other INT8 worlds
timed against the same FP32 ONNX on ORT (the latency-aware file on OpenVINO; PT2E INT8 for
XNNPACK on ExecuTorch), where those runtimes are installed; and CLE / bias correction on a
MobileNetV2-style net with the `tensorrt` preset (S8S8): the drop before and after.

    .venv/bin/python scripts/bench_int8.py [--min-time 1.0] [--cases all|presets|mobile]
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact, Format, Precision
from torchship.calibration import QuantizeOptions, quantize
from torchship.calibration.accuracy import compare_accuracy, run_eval
from torchship.calibration.ort_quantize import preprocess
from torchship.data import open_data
from torchship.exporter import ExportOptions, export_model
from torchship.fingerprint import machine_fingerprint
from torchship.loaded import LoadedModel
from torchship.models import demo_dataset, load_demo, resnet18_style, zoo_inputs
from torchship.runtimes import BenchConfig, bench_runner

THREADS = 2
BATCHES = (1, 8)


@dataclass
class Case:
    name: str
    fp32: Artifact
    calib: dict
    evaluation: dict
    #: Accuracy budget (points). The random-weight ResNet has near-tied logits over 1000
    #: classes, so ~1% of predictions flip even at output cosine 0.9999: with a 1-point budget
    #: the fallback would move convs to FP32 chasing noise, and the table would not show the
    #: presets' speed. Its drop column is top-1 *agreement* with FP32, not labelled accuracy.
    max_drop: float = 1.0
    #: The PyTorch model (the mobile nets), for the PT2E rows.
    model: LoadedModel | None = None


def demo_case(root: Path) -> Case:
    model = load_demo()
    (fp32,) = export_model(
        model, root / "demo", formats=["onnx"], options=ExportOptions(dynamo=False)
    )
    train, _ = demo_dataset("train")
    images, labels = demo_dataset("test")
    return Case("demo", fp32, {"image": train[:256]}, {"image": images, "labels": labels})


def resnet_case(root: Path) -> Case:
    spec = zoo_inputs("resnet18_style")
    model = LoadedModel(resnet18_style(), spec, ("logits",), source="zoo:resnet18_style")
    (fp32,) = export_model(
        model, root / "resnet", formats=["onnx"], options=ExportOptions(dynamo=False)
    )
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 1, (128, 3, 64, 64)).astype(np.float32)
    # 512 samples: one changed prediction is 0.2 points (random 1000-class logits have near-ties).
    evaluation = rng.uniform(-1, 1, (512, 3, 64, 64)).astype(np.float32)
    return Case("resnet18-style 64x64", fp32, {"image": calib}, {"image": evaluation}, 3.0)


def hand_tuned(case: Case, out: Path, *, activations: str, weights: str, per_channel: bool) -> Path:
    """Plain ORT quantize_static on the pre-processed model (what a user would hand-tune)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    types = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    pre = out.with_suffix(".pre.onnx")
    preprocess(case.fp32.path, pre)
    feeds = iter([{"image": case.calib["image"][i : i + 32]} for i in range(0, 256, 32)])

    class Reader:
        def get_next(self):
            return next(feeds, None)

    quantize_static(
        str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
        activation_type=types[activations], weight_type=types[weights],
    )  # fmt: skip
    return out


def p50(artifact: Artifact, batch: int, min_time: float) -> float:
    config = BenchConfig(warmup=10, min_time_s=min_time, batches=(batch,), threads=THREADS)
    result = bench_runner("ort-cpu", artifact, config=config, batch=batch)
    gc.collect()
    return result.latency_ms["p50"]


def as_artifact(case: Case, path: Path) -> Artifact:
    return Artifact.create(
        path, format=Format.ONNX, inputs=case.fp32.inputs, outputs=case.fp32.outputs,
        precision=Precision.INT8,
    )  # fmt: skip


def variants(case: Case, root: Path):
    """(label, artifact path) for every preset/method and the hand-tuned ORT baselines."""
    configs = [("auto", "minmax"), ("auto", "entropy"), ("auto", "percentile")]
    configs += [(t, "minmax") for t in ("cpu-x86", "cpu-x86-vnni", "cpu-arm", "tensorrt")]
    for target, method in configs:
        options = QuantizeOptions(
            target=target, method=method, max_drop=case.max_drop, bench=False, threads=THREADS
        )
        result = quantize(
            case.fp32, root / f"{target}-{method}", calib=case.calib,
            eval_data=case.evaluation, options=options,
        )  # fmt: skip
        excluded = len(result.report["fallback"]["excluded_nodes"])
        label = f"{target} ({result.report['preset']['name']}) {method}"
        label += f", {excluded} nodes kept FP32" if excluded else ""
        yield label, result.artifact.path
    for name, (a, w, pc) in {
        "hand: ORT default S8S8 per-tensor": ("s8", "s8", False),
        "hand: U8S8 per-channel": ("u8", "s8", True),
        "hand: U8S8 per-tensor": ("u8", "s8", False),
    }.items():
        yield name, hand_tuned(case, root / f"{name.split(':')[1].strip()}.onnx".replace(" ", "_"),
                               activations=a, weights=w, per_channel=pc)  # fmt: skip


def run_case(case: Case, root: Path, min_time: float) -> list[str]:
    data = open_data(case.evaluation, inputs=case.fp32.inputs)
    reference = run_eval(case.fp32.path, data, threads=THREADS)
    base = {b: p50(case.fp32, b, min_time) for b in BATCHES}
    rows = [
        f"| {case.name} | FP32 | " + " | ".join(f"{base[b]:.3f} ms" for b in BATCHES) + " | - |"
    ]
    for label, path in variants(case, root):
        artifact = as_artifact(case, path)
        accuracy = compare_accuracy(run_eval(path, data, threads=THREADS), reference)
        ratios = [base[b] / p50(artifact, b, min_time) for b in BATCHES]
        cells = " | ".join(f"{r:.2f}x" for r in ratios)
        rows.append(f"| {case.name} | {label} | {cells} | {accuracy.drop:.2f} |")
    return rows


def profile_ops(path: Path, batch: int = 8, iters: int = 50) -> list[tuple[str, float]]:
    """Share of kernel time per op type (ORT profiler) for one INT8 model."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_profiling = True
    # the trace lands beside the model (a temporary folder), not in the working directory
    options.profile_file_prefix = str(path.parent / "ort_profile")
    options.intra_op_num_threads = THREADS
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shape = [batch, *session.get_inputs()[0].shape[1:]]
    feed = {name: np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)}
    for _ in range(iters):
        session.run(None, feed)
    trace_path = Path(session.end_profiling())
    trace = json.loads(trace_path.read_text())
    trace_path.unlink()
    totals: collections.Counter = collections.Counter()
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    whole = sum(totals.values()) or 1
    return [(op, 100 * t / whole) for op, t in totals.most_common(6)]


def digits_64(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The shipped digits as 3x64x64 images (each pixel 2x2, grey in all three channels)."""
    images, labels = demo_dataset(split)
    big = np.repeat(np.repeat(images, 2, axis=2), 2, axis=3)
    return np.ascontiguousarray(np.repeat(big, 3, axis=1)), labels


def train_briefly(module, epochs: int, seed: int = 0):
    """A few epochs of Adam on the digits' train split (the point is a real, trained net)."""
    import torch

    torch.manual_seed(seed)
    images, labels = digits_64("train")
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(module(x[batch]), y[batch]).backward()
            optimizer.step()
    return module.eval()


def mobile_case(root: Path, name: str, module, epochs: int) -> Case:
    from torchship.specs import InputSpec

    module = train_briefly(module, epochs)
    spec = (InputSpec("image", "float32", (8, 3, 64, 64), dynamic={0: "batch"}),)
    model = LoadedModel(module, spec, ("logits",), source=f"bench:{name}")
    (fp32,) = export_model(
        model, root / name, formats=["onnx"], options=ExportOptions(dynamo=False)
    )
    train, _ = digits_64("train")
    images, labels = digits_64("test")
    evaluation = {"image": images, "labels": labels}
    return Case(name, fp32, {"image": train[:256]}, evaluation, 0.5, model)


def run_mobile_case(case: Case, root: Path, min_time: float, search_s: float) -> list[str]:
    """FP32, old default, latency-aware default and the ORT peers at batch 8, one run."""
    data = open_data(case.evaluation, inputs=case.fp32.inputs)
    reference = run_eval(case.fp32.path, data, threads=THREADS)
    base = p50(case.fp32, 8, min_time)
    top1 = float(np.mean(reference.logits.argmax(1) == case.evaluation["labels"]))
    rows = [f"| {case.name} | FP32 (top-1 {100 * top1:.1f}%) | {base:.3f} ms | 1.00x | - | |"]
    configs = {
        "old default (auto, --no-latency-search)": dict(latency_search=False),
        "torchship default (latency-aware)": dict(latency_search_time_s=search_s),
    }
    for label, extra in configs.items():
        options = QuantizeOptions(max_drop=case.max_drop, bench=False, threads=THREADS, **extra)
        result = quantize(
            case.fp32, root / label.split()[0], calib=case.calib, eval_data=case.evaluation,
            options=options,
        )  # fmt: skip
        search = result.report.get("latency_search") or {}
        note = f"ships {search.get('shipped', 'int8').upper()}"
        if search.get("excluded_regions"):
            note += ": FP32 " + ", ".join(search["excluded_regions"])
        rows.append(_mobile_row(case, label, result.artifact, base, min_time, data, reference,
                                note))  # fmt: skip
        shipped = result.artifact
        if search.get("ran"):
            rows += [f"|  | search: {line} | | | | |" for line in _search_lines(search)]
    for label, (a, w, pc) in {
        "ORT default (S8S8 per-tensor)": ("s8", "s8", False),
        "hand: U8S8 per-channel": ("u8", "s8", True),
    }.items():
        path = hand_tuned(case, root / f"{label.split()[0]}-{a}{w}{pc}.onnx", activations=a,
                          weights=w, per_channel=pc)  # fmt: skip
        rows.append(_mobile_row(case, label, as_artifact(case, path), base, min_time, data,
                                reference, ""))  # fmt: skip
    rows += _other_runtime_rows(case, root, shipped, base, min_time, data, reference)
    return rows


def _other_runtime_rows(case, root, shipped, base, min_time, data, reference) -> list[str]:
    """torchship's other INT8 worlds on the same net, timed against FP32 ONNX on ORT: the
    latency-aware file on OpenVINO, and PT2E INT8 (`quantize --target xnnpack`) on ExecuTorch."""
    from torchship.quantize_pt2e import quantize_pt2e
    from torchship.runtimes import available_runners

    rows, here = [], available_runners()
    if "openvino" in here:
        label = "torchship default, the same file on OpenVINO"
        rows.append(_mobile_row(case, label, shipped, base, min_time, data, reference, "",
                                runtime="openvino"))  # fmt: skip
    if "executorch" in here:
        result = quantize_pt2e(
            case.model, root / "xnnpack", target="xnnpack", calib=case.calib,
            eval_data=case.evaluation, max_drop=case.max_drop, threads=THREADS, bench=False,
        )  # fmt: skip
        kept = result.artifact.details.get("kept_fp32", [])
        note = "PT2E XNNPACKQuantizer" + (f"; FP32: {', '.join(kept)}" if kept else "")
        rows.append(_mobile_row(case, "torchship quantize --target xnnpack (ExecuTorch .pte)",
                                result.artifact, base, min_time, data, reference, note,
                                runtime="executorch"))  # fmt: skip
    return rows


def _search_lines(search: dict) -> list[str]:
    lines = []
    for row in search["table"]:
        ratio = row["latency_ratio_vs_fp32"]
        speed = "-" if not ratio else f"{1 / ratio:.2f}x"
        drop = "-" if row["drop"] is None else f"{row['drop']:.2f}"
        lines.append(f"{row['candidate']} -> {speed}, drop {drop} ({row['verdict']})")
    return lines


def _mobile_row(
    case, label, artifact, base, min_time, data, reference, note, *, runtime: str = "ort-cpu"
) -> str:
    """Speedup over FP32 ONNX on ORT from interleaved rounds (robust to load drifting)."""
    from torchship.runtimes.evaluate import evaluate
    from torchship.runtimes.interleaved import interleaved_ab

    outputs = evaluate(artifact, data, runtime=runtime, threads=THREADS)
    accuracy = compare_accuracy(outputs, reference)
    ratio = interleaved_ab(
        case.fp32, artifact, runtime="ort-cpu", runtime_b=runtime, batch=8, threads=THREADS,
        rounds=8, iters_per_round=50, round_s=max(0.05, min_time / 8), warmup=2,
    ).ratio  # fmt: skip
    return (
        f"| {case.name} | {label} | {base * ratio:.3f} ms | {1 / ratio:.2f}x | "
        f"{accuracy.drop:.2f} | {note} |"
    )


def ptq_rows(root: Path, epochs: int) -> list[str]:
    """CLE / bias correction on a MobileNetV2-style net, `tensorrt` preset (S8S8)."""
    from torchship.models.mobile import MobileNetV2Style

    case = mobile_case(root, "mobilenetv2-style", MobileNetV2Style(), epochs)
    rows = []
    for algos in ("none", "cle", "bias-correction", "cle,bias-correction"):
        options = QuantizeOptions(
            target="tensorrt", max_drop=100.0, bench=False, threads=THREADS, ptq_algos=algos
        )
        result = quantize(
            case.fp32, root / f"trt-{algos}", calib=case.calib, eval_data=case.evaluation,
            options=options,
        )  # fmt: skip
        accuracy = result.report["accuracy"]
        rows.append(
            f"| {case.name} | tensorrt preset, PTQ: {algos} | {accuracy['drop']:.2f} | "
            f"{100 * accuracy['top1']:.2f}% | {100 * accuracy['fp32_top1']:.2f}% | "
            f"{100 * accuracy['agreement']:.2f}% | {accuracy['cosine']:.5f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-time", type=float, default=1.0, help="timed seconds per p50")
    parser.add_argument("--cases", default="all", choices=("all", "presets", "mobile"))
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the mobile nets")
    parser.add_argument("--search-time", type=float, default=30.0, help="latency search bound")
    parser.add_argument("--out", help="also write the Markdown here")
    args = parser.parse_args()
    machine = machine_fingerprint()
    flags = ", ".join(f for f, on in machine["isa"].items() if on)
    lines = [f"CPU: {machine['cpu_model']} ({machine['logical_cores']} logical cores)"]
    lines += [f"ISA flags: {flags}", f"threads {THREADS}; ratio = FP32 p50 / INT8 p50"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        root = Path(tmp)
        if args.cases in ("all", "mobile"):
            lines += mobile_section(root, args)
        if args.cases == "mobile":
            lines.append(f"\n(total {time.perf_counter() - start:.0f} s)")
            print("\n".join(lines))
            if args.out:
                Path(args.out).write_text("\n".join(lines) + "\n")
            return
        lines += ["", "| model | config | batch 1 | batch 8 | top-1 drop (points) |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for build in (demo_case, resnet_case):
            case = build(root)
            lines += run_case(case, root / case.name.split()[0], args.min_time)
        for sub in ("demo", "resnet18-style"):
            shares = profile_ops(root / sub / "auto-minmax" / "model.int8.onnx")
            text = ", ".join(f"{op} {share:.0f}%" for op, share in shares)
            lines.append(f"\n{sub} auto INT8 kernel time (batch 8): {text}")
    lines.append(f"\n(total {time.perf_counter() - start:.0f} s)")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def mobile_section(root: Path, args) -> list[str]:
    from torchship.models.mobile import EfficientNetStyle, MobileNetV3Style

    title = f"Mobile nets, digits 3x64x64, {args.epochs} epochs, batch 8, budget 0.5 points"
    header = (
        "| model | config | p50 (FP32 p50 x ratio) | vs FP32 (interleaved) | top-1 drop | note |"
    )
    lines = ["", title, "", header, "|---|---|---|---|---|---|"]
    for name, module in (
        ("mobilenetv3-style", MobileNetV3Style(width=2.0)),
        ("efficientnet-style", EfficientNetStyle()),
    ):
        case = mobile_case(root, name, module, args.epochs)
        lines += run_mobile_case(case, root / name / "q", args.min_time, args.search_time)
    header = "| model | config | top-1 drop | INT8 top-1 | FP32 top-1 | agreement | cosine |"
    lines += ["", "CLE / bias correction, `tensorrt` preset (S8S8), digits 3x64x64", ""]
    lines += [header, "|---|---|---|---|---|---|---|"]
    lines += ptq_rows(root, args.epochs)
    return lines


if __name__ == "__main__":
    main()
