"""Who applies an update to the trainable tensors: plain PyTorch (one process or ``torchrun``) or DeepSpeed's
engine. Both take the loss of this rank's share of the global batch, already scaled so that averaging over
ranks gives the gradient of the global mean loss (the trainer does that), and expose the same four calls::

    step.backward(loss)     # gradients of one micro-batch of this rank's share (accumulated)
    step.step()             # average over ranks (once), clip, optimiser and schedule step, zero the gradients
    step.state_dict()       # optimiser + schedule state for the checkpoint
    step.load_state_dict(state)

Gradients of the sharded mapping reach the latents through the generator's reduce-scatter (a SUM), so each
rank holds the SUM over ranks of its own rows' contribution; one averaging over ranks then equals the
data-parallel mean. Reducing with AVG there as well would divide by N twice.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mapscale.distributed.world import World


class TorchStep:
    """The recipe's optimiser and schedule; with several ranks, one all-reduce (SUM, then / N) of all the
    trainable gradients, flattened into one buffer. ``accumulation`` micro-batches per step."""

    def __init__(self, params: list[nn.Parameter], optimizer, schedule, grad_clip: float | None, world: World, accumulation: int = 1) -> None:
        self.params, self.optimizer, self.schedule, self.grad_clip, self.world = params, optimizer, schedule, grad_clip, world
        self.accumulation = accumulation

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()

    def step(self) -> None:
        if self.world.distributed:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            flat = self.world.sum(torch.cat([g.reshape(-1) for g in grads])) / self.world.size
            for p, g in zip(self.params, flat.split([g.numel() for g in grads])):
                p.grad = g.view_as(p).to(p.dtype)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.world.traffic.end_step()

    def last_lr(self) -> float:
        return self.schedule.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])


class _Trainables(nn.Module):
    """What DeepSpeed's engine owns: the model and the loss (for its learned coefficients)."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn


class DeepSpeedStep:
    """DeepSpeed's engine over the trainable tensors, with the recipe's optimiser and schedule as its client
    optimiser and scheduler. The engine averages the gradients over ranks (once), clips, handles bf16 and
    steps the schedule. The mapping weights are buffers, so its broadcast of parameters from rank 0 at
    ``initialize`` leaves each rank's shard alone."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer, schedule, config: dict[str, Any], world: World | None = None) -> None:
        import deepspeed  # imported only for DeepSpeed runs: it takes seconds

        self.world = world or World()
        self.world.traffic.counted = False  # the engine reduces the gradients with collectives of its own

        self.engine, self.optimizer, _, self.schedule = deepspeed.initialize(
            model=_Trainables(model, loss_fn), optimizer=optimizer, lr_scheduler=schedule, config=config
        )
        # Our own optimiser object (no ZeRO, no bf16): its state is whole on every rank, so a checkpoint
        # resumes on any number of ranks. Otherwise DeepSpeed partitions it across the ranks.
        self.partitioned = self.optimizer is not optimizer

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed divides by its gradient_accumulation_steps and counts micro-batches in step(): it must be
        # called after every backward, and applies the update (averaging, clipping) at the last of them.
        self.engine.backward(loss)
        self.engine.step()

    def step(self) -> None:
        """Nothing left to do: the engine stepped at the step's last micro-batch."""
        self.world.traffic.end_step()

    def last_lr(self) -> float:
        return self.engine.get_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        if self.partitioned:
            return {"deepspeed_partitioned": True, "schedule": self.schedule.state_dict()}
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("deepspeed_partitioned") != self.partitioned:
            raise ValueError("the checkpoint's optimiser state and this run's DeepSpeed config disagree on ZeRO/bf16 partitioning")
        if not self.partitioned:
            self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])

    def save_partitions(self, directory) -> None:
        """DeepSpeed's own checkpoint of the partitioned optimiser state (every rank calls it)."""
        self.engine.save_checkpoint(str(directory), tag="partitions")

    def load_partitions(self, directory) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag="partitions", load_module_strict=False)
        if path is None:
            raise ValueError(f"no DeepSpeed optimiser partitions in {directory}: resume this run with its DeepSpeed config on the same number of ranks")


def deepspeed_config(config: dict[str, Any], *, batch_size: int, accumulation: int, world: World, grad_clip: float | None) -> dict[str, Any]:
    """The recipe's DeepSpeed config with what the trainer owns filled in: batch sizes from ``optim.batch_size``
    (the global batch of one step) over the world and ``optim.accumulation_steps``, clipping from
    ``optim.grad_clip``."""
    config = dict(config)
    given = config.setdefault("gradient_accumulation_steps", accumulation)
    if given != accumulation:
        raise ValueError(f"the DeepSpeed config's gradient_accumulation_steps {given} differs from optim.accumulation_steps {accumulation}; set optim.accumulation_steps")
    micro = -(-batch_size // (world.size * accumulation))
    config.setdefault("train_micro_batch_size_per_gpu", micro)
    config.setdefault("train_batch_size", config["train_micro_batch_size_per_gpu"] * accumulation * world.size)
    if grad_clip is not None:
        config.setdefault("gradient_clipping", grad_clip)
    if config.get("fp16", {}).get("enabled") and world.device.type == "cpu":
        raise ValueError("DeepSpeed's CPU accelerator does not support fp16; use bf16 (launch/ds_zero1_bf16.json) or fp32")
    config.setdefault("steps_per_print", 10**9)
    return config
