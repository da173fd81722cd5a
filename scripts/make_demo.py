"""Regenerate the embedded demo data and weights, reproducibly.

    python scripts/make_demo.py [--epochs N] [--out DIR]

Writes `digits.npz` (the UCI handwritten digits from scikit-learn, uint8 8x8 images with values
0..16, a fixed stratified train/test split) and `demo.safetensors` (DemoNet trained on the train
split, fp32) into torchship/models/data. scikit-learn is needed here only, not at runtime.
Fixed seeds, deterministic algorithms and a fixed thread count make reruns give the same bytes.
"""

from __future__ import annotations

import argparse
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchship.files import atomic_path, sha256_file
from torchship.models.demo import (
    DATA_FILE,
    WEIGHTS_FILE,
    build_demo,
    demo_preprocess,
    top1_accuracy,
)

SEED = 0
TEST_SIZE = 400
THREADS = 2
MAX_SHIPPED_BYTES = 2 * 1024 * 1024
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "torchship" / "models" / "data"


def load_split(*, seed: int = SEED) -> dict[str, np.ndarray]:
    """The digits as uint8 images and int64 labels, split train/test by a seeded stratified draw."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.uint8)  # values are integers 0..16
    labels = digits.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, test_size=TEST_SIZE, random_state=seed, stratify=labels
    )
    return {"train_images": tr_x, "train_labels": tr_y, "test_images": te_x, "test_labels": te_y}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps so the bytes are reproducible."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def random_shift(x: torch.Tensor, *, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `pad` pixels in x and y (zero-padded at the background value)."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad), value=-1.0)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, 1, h, w + 2 * pad)
    shifted = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, 1, h, w)
    return torch.gather(shifted, 3, cols)


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.inference_mode():
        logits = model(torch.from_numpy(images)).numpy()
    return top1_accuracy(logits, labels)


def train(split: dict[str, np.ndarray], *, epochs: int, batch: int = 64) -> nn.Module:
    """Adam + one-cycle schedule with random-shift augmentation; prints progress per epoch."""
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    x = torch.from_numpy(demo_preprocess(split["train_images"]))
    y = torch.from_numpy(split["train_labels"])
    test_x, test_y = demo_preprocess(split["test_images"]), split["test_labels"]
    model = build_demo()
    steps = epochs * ((len(x) + batch - 1) // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    for epoch in range(epochs):
        model.train()
        start, total = time.perf_counter(), 0.0
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            loss = loss_fn(model(random_shift(x[idx], pad=2, generator=generator)), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        acc = evaluate(model, test_x, test_y)
        print(
            f"epoch {epoch + 1:2d}/{epochs}  loss {total / len(x):.4f}  "
            f"held-out top-1 {acc:.4f}  ({time.perf_counter() - start:.1f}s)"
        )
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    from safetensors.torch import save_file

    split = load_split()
    print(f"digits: {len(split['train_labels'])} train, {len(split['test_labels'])} test")
    start = time.perf_counter()
    model = train(split, epochs=args.epochs)
    print(f"trained in {time.perf_counter() - start:.1f}s")
    accuracy = evaluate(model, demo_preprocess(split["test_images"]), split["test_labels"])
    args.out.mkdir(parents=True, exist_ok=True)
    write_npz(args.out / DATA_FILE, split)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(args.out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    sizes = {name: (args.out / name).stat().st_size for name in (DATA_FILE, WEIGHTS_FILE)}
    for name, size in sizes.items():
        print(f"{name}: {size / 1024:.1f} KiB  sha256 {sha256_file(args.out / name)}")
    print(f"final held-out top-1 accuracy: {accuracy:.4f}")
    if sum(sizes.values()) > MAX_SHIPPED_BYTES:
        print(f"shipped files total {sum(sizes.values())} bytes, over the 2 MiB budget")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
