"""What a run writes as it goes: ``metrics.jsonl`` (one JSON record a line), TensorBoard scalars when
TensorBoard is installed, and the rich progress bar. Only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mapscale.distributed.world import World

METRICS = "metrics.jsonl"


class RunLog:
    """Appends records to ``run_dir/metrics.jsonl`` and TensorBoard (when ``enabled``: rank 0)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path, self.enabled = Path(run_dir) / METRICS, enabled
        self.tensorboard = _tensorboard(Path(run_dir)) if enabled else None

    def write(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": step, **record}) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.tensorboard.add_scalar(f"{record.get('split', 'train')}/{key}", value, step)

    def truncate(self, step: int) -> None:
        """Drop what an interrupted process logged after its checkpoint at ``step``."""
        if self.enabled and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_records(run_dir: Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` (none when it does not exist)."""
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def global_mean(weighted: dict[str, torch.Tensor], world: World) -> dict[str, float]:
    """The loss terms of the global batch: the rank-weighted values averaged over ranks (one collective)."""
    if not weighted:
        return {}
    values = torch.stack(list(weighted.values()))
    values = world.sum(values if values.dtype == torch.float64 else values.float(), control=True) / world.size  # fp64 runs log float64
    return dict(zip(weighted, values.tolist()))


def progress_bar(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[metric]}"),
        TextColumn("{task.fields[rate]:.0f} samples/s"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=not enabled,
    )


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
