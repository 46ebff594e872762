"""The input pipeline: images per second of the training loader alone, and samples per second of whole training
steps, for ``data.workers`` 0, 1, 2 (...), on the embedded real-versus-generated image folder
(`mapscale.data.deepfake`).

    python bench/loader.py --out bench/results/loader.md                 # ~4 minutes on 2 CPU cores
    python bench/loader.py --size 224 --workers 0 2 4 8 --device cuda    # a GPU machine

Loader alone: the training loader exactly as `mapscale.train.loop.batches` builds it (`make_loader` over the
run's training split, one persistent loader, ``--batch`` images a batch, the recipe's order) for ``--epochs``
epochs (after an untimed first one: the workers' start-up) at ``--size``² (``recipes/resnet50_deepfake.py``'s transform: decode, resize, normalise; no augmentation
in that recipe), each batch copied to ``--device``; the set built at each of ``--sources`` pixels (built at
``--size``: decoding alone; larger: decoding and resizing cost what real frames cost). The worker counts take turns, ``--rounds`` times, and the
median is reported, so they share the machine alike. Training: ``--train-steps`` steps of each recipe of
``--recipes`` with each worker count (samples/s of the run's own log, first record left out), what decides
``data.workers``' default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mapscale.data import build_datasets  # noqa: E402
from mapscale.data.deepfake import embedded_deepfake_folder  # noqa: E402
from mapscale.recipe import apply_overrides, load_recipe  # noqa: E402
from mapscale.train.build import epoch_batches  # noqa: E402
from mapscale.train.loader import StepBatches, make_loader  # noqa: E402


def loader_rate(size: int, source: int, workers: int, epochs: int, batch: int, device: str) -> float:
    """Images per second of the training loader over ``epochs`` epochs after a first, untimed one (the workers'
    start-up, once a run with persistent workers): the embedded set built at ``source``² pixels, read at
    ``size``² (resized by the recipe's transform when they differ)."""
    folder, _ = embedded_deepfake_folder(source)
    recipe = apply_overrides(load_recipe(ROOT / "recipes" / "resnet50_deepfake.py"), [
        f"data.path={folder}", f"data.image_size={size}", f"data.workers={workers}", f"optim.batch_size={batch}"])
    train = build_datasets(recipe.data, recipe.task).train
    sampler = StepBatches()
    loader = make_loader(train, recipe, device, batch_sampler=sampler, persistent=True)
    count, start = 0, time.perf_counter()
    for epoch in range(epochs + 1):
        if epoch == 1:
            count, start = 0, time.perf_counter()
        sampler.set([list(b) for b in epoch_batches(len(train), batch, recipe.seed, epoch)])
        for inputs, _ in loader:
            inputs.to(device, non_blocking=True)
            count += len(inputs)
    if device == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


class _Constant(torch.utils.data.Dataset):
    def __init__(self, size: int, dtype: torch.dtype) -> None:
        self.item = torch.zeros(3, size, size, dtype=dtype)

    def __len__(self) -> int:
        return 640

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.item.clone()


def transfer_ms(size: int, dtype: torch.dtype, workers: int, batch: int) -> float:
    """Milliseconds per batch of a loader whose items cost nothing to make: what moving a batch from a worker
    process costs (shared memory), against stacking it in the process (workers=0)."""
    options = {"num_workers": workers, "persistent_workers": True, "prefetch_factor": 4} if workers else {}
    loader = torch.utils.data.DataLoader(_Constant(size, dtype), batch_size=batch, **options)
    for _ in loader:
        pass
    count, start = 0, time.perf_counter()
    for _ in range(3):
        for _ in loader:
            count += 1
    return (time.perf_counter() - start) / count * 1e3


def train_rate(recipe_path: Path, workers: int, steps: int, device: str) -> float:
    """Samples per second of ``steps`` training steps (the log's rate, the first record left out: start-up)."""
    from mapscale.train import train

    recipe = apply_overrides(load_recipe(recipe_path), [f"data.workers={workers}", f"optim.max_steps={steps}", "output.log_every=1",
                                                         "output.progress=false", "output.eval_train=false"])
    with tempfile.TemporaryDirectory() as folder:
        train(recipe, Path(folder), device=device)
        rates = [json.loads(line)["samples_per_s"] for line in (Path(folder) / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--sources", type=int, nargs="+", default=[224, 448], help="sizes the embedded set is built at (larger: decoding costs more, as real frames do)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--recipes", nargs="*", default=["recipes/resnet50_deepfake.py", "recipes/deepfake_cnn2_lwt.py"])
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    lines = [f"# The input pipeline: `data.workers` ({cores} cores, {args.device}, torch {torch.__version__})", "",
             f"`python bench/loader.py {' '.join(sys.argv[1:])}`", ""]
    for source in args.sources:
        rates: dict[int, list[float]] = {w: [] for w in args.workers}
        for _ in range(args.rounds):
            for workers in args.workers:
                rates[workers].append(loader_rate(args.size, source, workers, args.epochs, args.batch, args.device))
                print(f"loader {source}->{args.size} workers={workers}: {rates[workers][-1]:.0f} images/s", flush=True)
        base = statistics.median(rates[args.workers[0]])
        read = "decoded at that size" if source == args.size else f"decoded at {source}² and resized to {args.size}² (bilinear)"
        lines += [f"## Loader alone: the embedded set built at {source}², {read}; batch {args.batch}, {args.epochs} epochs of 640 images after one untimed (worker start-up), median of {args.rounds} rounds", "",
                  "| workers | images/s | rounds | vs workers=" + str(args.workers[0]) + " |", "|---:|---:|---|---:|"]
        for workers, values in rates.items():
            lines.append(f"| {workers} | {statistics.median(values):,.0f} | {', '.join(f'{v:,.0f}' for v in values)} | {statistics.median(values) / base:.2f}x |")
        lines.append("")
    lines += [f"## Moving a batch from a worker: {args.batch} x 3 x {args.size}² items that cost nothing to make, ms per batch", "",
              "| items | " + " | ".join(f"workers={w}" for w in args.workers) + " |", "|---|" + "---:|" * len(args.workers)]
    for dtype in (torch.uint8, torch.float32):
        cells = [f"{transfer_ms(args.size, dtype, w, args.batch):.2f}" for w in args.workers]
        lines.append(f"| {str(dtype).removeprefix('torch.')} | " + " | ".join(cells) + " |")
    lines += ["", "Loaders of image folders move uint8 pixels and normalise them in the training process (`mapscale.train.loader.PixelLoader`).", ""]
    for recipe in args.recipes:
        lines += [f"## Training: `{recipe}`, {args.train_steps} steps, samples/s (median of the logged steps after the first; median of {args.rounds} rounds)", "",
                  "| workers | samples/s | rounds | vs workers=" + str(args.workers[0]) + " |", "|---:|---:|---|---:|"]
        train_rates: dict[int, list[float]] = {w: [] for w in args.workers}
        for _ in range(args.rounds):
            for workers in args.workers:
                train_rates[workers].append(train_rate(ROOT / recipe, workers, args.train_steps, args.device))
                print(f"{recipe} workers={workers}: {train_rates[workers][-1]:.1f} samples/s", flush=True)
        base = statistics.median(train_rates[args.workers[0]])
        for workers, values in train_rates.items():
            rate = statistics.median(values)
            lines.append(f"| {workers} | {rate:,.1f} | {', '.join(f'{v:,.1f}' for v in values)} | {rate / base:.2f}x |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
