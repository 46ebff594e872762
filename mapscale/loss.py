"""The Mapping Loss: ``L = L_task + λ_stab L_stab + λ_smooth L_smooth + λ_align L_align`` (DESIGN.md, "Mapping Loss").

Terms, for a `MappedModel` with generator ``G`` and latents ``z``:

- ``task``: the task's loss on the model's output (cross-entropy, MSE, per-pixel CE: any callable
  ``(output, targets) -> scalar``).
- ``stability``: ``E_δ mean((f(x; G(z + δ)) - f(x; G(z)))²)`` with ``δ ~ N(0, ε² I)``, one sample per step:
  one extra forward of the target with perturbed generated weights. It is the mean over output elements,
  so it does not grow with the output's size. The perturbed forward replays the clean forward's random
  state (same dropout masks) and writes BatchNorm running statistics to throw-away copies, so at ``ε = 0``
  the term is exactly 0.
- ``smoothness``: ``||∂G/∂z||_F²`` summed over groups. Exact where the operator allows it cheaply
  (`MappingGenerator.jacobian_sq_norm`: per-tensor row sums of the mapping for the identity activation,
  one product with ``W`` and one with ``W∘W`` otherwise); else an unbiased Hutchinson estimate
  ``E_v ||J v||²`` (Rademacher ``v``) through one ``torch.func.jvp`` of the whole generator.
- ``alignment``: ``1 - cos(z_g, W_m,g)`` averaged over groups, ``W_m`` the row-wise mean of the modulated
  mapping; the cosine's denominator is clamped at ``1e-12`` because ``W_m`` of a large orthonormal
  mapping is near 0. It is singular at ``z = 0`` (the start of ``offset="init"`` runs): switch it off there.

Coefficients. The paper calls the λ "trainable" and gives no constraint; left free, minimising ``L`` sends
them to -∞, and under a softplus they collapse to 0. Here each switched-on term has either

- ``coefficients="learned"`` (default): ``λ = exp(log λ_min + (log λ_max - log λ_min) * sigmoid(ρ))`` with
  ``ρ`` trainable, and the term enters as ``λ L_k - ½ log λ`` (uncertainty weighting, Kendall et al. 2018,
  written in ``λ = 1/(2s²)``). The ``- ½ log λ`` makes shrinking λ cost something: for a fixed ``L_k`` the
  optimum is ``λ = 1/(2 L_k)``, so a term's weight adapts to its scale instead of being driven to 0, and
  the sigmoid keeps λ inside ``[λ_min, λ_max]`` even when ``L_k`` reaches 0 or explodes. The task's weight
  stays 1, and the default ``λ_max = 1`` lets no extra term outweigh it: measured on two splits of the
  shipped MNIST subset (SLVT 2048, 20 epochs, `bench/mapping_loss.py`), ``λ_max = 1e4`` let the stability
  weight climb to ~8,000 and cost 3.7 and 3.4 points of test accuracy against the task loss alone, while
  ``λ_max = 1`` gave -1.5 and +0.5; or
- ``coefficients="fixed"``: ``λ`` is the given value, a constant.

Pass ``None`` (or 0) for a term's λ to switch it off. Per-term values, coefficients and wall time (only when
``time_terms``; the device is synchronised around each term only with ``time_terms="sync"``) come back in
`LossOutput`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from mapscale.mapping.contract import group_offsets, views
from mapscale.mapping.mapped import MappedModel, RngState
from mapscale.mapping.operators import mapping_key

TERMS = ("stability", "smoothness", "alignment")
ESTIMATORS = ("auto", "exact", "hutchinson")
COEFFICIENTS = ("learned", "fixed")


@dataclass
class LossOutput:
    """``total`` to back-propagate; ``output`` of the clean forward (for metrics); detached per-term
    ``values`` (``"task"`` and each switched-on term), ``coefficients`` (λ) and ``seconds``."""

    total: Tensor
    output: object
    values: dict[str, Tensor] = field(default_factory=dict)
    coefficients: dict[str, Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class MappingLoss(nn.Module):
    """The Mapping Loss of a `MappedModel`'s output: ``loss(output, targets, model, inputs=..., rng=..., step=...)
    -> LossOutput``. The trainer runs the model; the loss never runs its clean forward.

    Args:
        task_loss: ``(output, targets) -> scalar``.
        stability, smoothness, alignment: each term's initial (learned) or constant (fixed) λ; None or 0
            switches the term off.
        stability_eps: the std ``ε`` of the latent perturbation.
        coefficients: ``"learned"`` (bounded uncertainty weighting, see the module docstring) or ``"fixed"``.
        coefficient_bounds: ``(λ_min, λ_max)`` of learned coefficients.
        smoothness_estimator: ``"auto"`` (exact where cheap, else Hutchinson), ``"exact"`` or ``"hutchinson"``.
        hutchinson_samples: JVPs averaged per Hutchinson estimate.
        seed: keys the per-step noise (perturbations, Hutchinson probes) with the optimiser step the trainer
            passes, so every micro-batch of a step, every rank and a resumed run draw the same noise.
        time_terms: measure each term's wall time: False (default), True (host time, no synchronisation) or
            ``"sync"`` (the device synchronised around each term: a stall on every GPU step).
    """

    def __init__(
        self,
        task_loss: Callable[[object, Tensor], Tensor],
        *,
        stability: float | None = 0.5,
        smoothness: float | None = 0.5,
        alignment: float | None = 0.5,
        stability_eps: float = 0.01,
        coefficients: Literal["learned", "fixed"] = "learned",
        coefficient_bounds: tuple[float, float] = (1e-4, 1.0),
        smoothness_estimator: Literal["auto", "exact", "hutchinson"] = "auto",
        hutchinson_samples: int = 1,
        seed: int = 0,
        time_terms: bool | str = False,
    ) -> None:
        super().__init__()
        if coefficients not in COEFFICIENTS:
            raise ValueError(f"unknown coefficients {coefficients!r}; choose one of {list(COEFFICIENTS)}")
        if smoothness_estimator not in ESTIMATORS:
            raise ValueError(f"unknown smoothness_estimator {smoothness_estimator!r}; choose one of {list(ESTIMATORS)}")
        if not stability_eps >= 0:
            raise ValueError(f"stability_eps must be >= 0, got {stability_eps}")
        if time_terms not in (False, True, "sync"):
            raise ValueError(f"time_terms must be False, True or 'sync', got {time_terms!r}")
        if not isinstance(hutchinson_samples, int) or hutchinson_samples < 1:
            raise ValueError(f"hutchinson_samples must be a positive int, got {hutchinson_samples!r}")
        low, high = coefficient_bounds
        if not 0 < low < high < math.inf:
            raise ValueError(f"coefficient_bounds must satisfy 0 < low < high < inf, got {coefficient_bounds}")
        self.task_loss = task_loss
        self.stability_eps, self.smoothness_estimator = stability_eps, smoothness_estimator
        self.hutchinson_samples, self.seed, self.time_terms = hutchinson_samples, seed, time_terms
        self.learned = coefficients == "learned"
        self.bounds, self.log_bounds = (low, high), (math.log(low), math.log(high))
        self.terms: list[str] = []
        initial = {"stability": stability, "smoothness": smoothness, "alignment": alignment}
        raw = []
        for name in TERMS:
            value = initial[name]
            if value is None or value == 0:
                continue
            if not value > 0:
                raise ValueError(f"coefficient of {name} must be positive (or None to switch it off), got {value}")
            if self.learned and not low <= value <= high:
                raise ValueError(f"initial coefficient {value} of {name} is outside the bounds {coefficient_bounds}")
            self.terms.append(name)
            raw.append(self._to_raw(value) if self.learned else float(value))
        if self.learned:
            self.raw_coefficients = nn.Parameter(torch.tensor(raw, dtype=torch.float32))
        else:
            self.register_buffer("raw_coefficients", torch.tensor(raw, dtype=torch.float32))

    # -- coefficients -------------------------------------------------------------------------------------

    def _to_raw(self, value: float) -> float:
        lo, hi = self.log_bounds
        fraction = min(max((math.log(value) - lo) / (hi - lo), 1e-6), 1 - 1e-6)
        return math.log(fraction / (1 - fraction))  # inverse sigmoid

    def coefficient_values(self) -> Tensor:
        """``(terms,)``: the current λ of each switched-on term, in ``self.terms`` order."""
        if not self.learned:
            return self.raw_coefficients
        lo, hi = self.log_bounds
        # The clamp only removes float32 rounding past the bounds (exp(log 1000) = 1000.0001).
        return torch.exp(lo + (hi - lo) * torch.sigmoid(self.raw_coefficients)).clamp(*self.bounds)

    # -- the loss -----------------------------------------------------------------------------------------

    def forward(self, output, targets, model: MappedModel | None = None, *, inputs=None, rng: RngState | None = None, step: int = 0) -> LossOutput:
        """The loss of ``output`` (the trainer's forward of ``model`` on ``inputs``) against ``targets``.

        The terms read what they need: stability the model (a second forward, `MappedModel.forward_aside`, from
        perturbed latents), ``inputs`` and ``rng`` (the random state captured before the clean forward, `capture_rng`,
        so the perturbed pass draws the same dropout masks); smoothness and alignment the generator (its contract).
        ``step`` is the optimiser step: it keys the noise, so every micro-batch of a step, every rank and a resumed
        run draw the same perturbation."""
        clock = _Clock(self.time_terms, _device_of(output))
        task = self.task_loss(output, targets)
        result = LossOutput(total=task, output=output, values={"task": task.detach()})
        clock.record(result.seconds, "task")
        if self.terms and model is None:
            raise ValueError(f"the Mapping Loss terms {self.terms} need the model")

        coefficients = self.coefficient_values()
        total = task
        for i, name in enumerate(self.terms):
            if name == "stability":
                value = self._stability(model, output, inputs, rng, step)
            elif name == "smoothness":
                value = self._smoothness(model, step)
            else:
                value = self._alignment(model)
            clock.record(result.seconds, name)
            result.values[name] = value.detach()
            result.coefficients[name] = coefficients[i].detach()
            total = total + coefficients[i] * value
            if self.learned:
                total = total - 0.5 * torch.log(coefficients[i])
        result.total = total
        return result

    @property
    def perturbs(self) -> bool:
        """Whether a step's loss needs the random state before the forward (`capture_rng`) and the inputs."""
        return "stability" in self.terms

    def _noise(self, step: int, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(mapping_key(self.seed, f"loss/{purpose}/{step}"))

    def _stability(self, model: MappedModel, output, inputs, rng: RngState | None, step: int) -> Tensor:
        if inputs is None or rng is None:
            raise ValueError("the stability term needs the step's inputs and the random state captured before its forward (capture_rng)")
        noise = self._noise(step, "stability")
        latents = [z + self.stability_eps * torch.randn(z.shape, generator=noise, dtype=z.dtype).to(z.device) for z in model.generator.latents]
        perturbed_output = model.forward_aside(latents, inputs, rng=rng)
        pairs = list(zip(tree_leaves(perturbed_output), tree_leaves(output)))
        diffs = [F.mse_loss(p, c) for p, c in pairs if isinstance(c, Tensor) and c.is_floating_point()]
        if not diffs:
            raise TypeError(f"stability needs floating-point tensor outputs, the model returned {type(output).__name__}")
        return torch.stack(diffs).sum()

    def _smoothness(self, model: MappedModel, step: int) -> Tensor:
        generator = model.generator
        if self.smoothness_estimator != "hutchinson":
            exact = [generator.jacobian_sq_norm(i) for i in range(len(generator.layout.groups))]
            if all(value is not None for value in exact):
                return torch.stack(exact).sum()
            if self.smoothness_estimator == "exact":
                raise ValueError(f"{type(generator).__name__} gives no exact Jacobian norm here (operator or assembly); use 'auto' or 'hutchinson'")
        if not generator.part.whole:
            raise ValueError(
                "the smoothness term's Hutchinson estimate needs whole groups, which sharded generation does not hold; "
                "on several ranks use mapping.activation=identity (exact norm) or loss.smoothness=0"
            )
        return hutchinson_jacobian_sq_norm(model, self.hutchinson_samples, self._noise(step, "hutchinson"))

    def _alignment(self, model: MappedModel) -> Tensor:
        generator = model.generator
        terms = []
        for i, z in enumerate(generator.latents):
            row_means = generator.modulated_row_means(i)
            cosine = torch.dot(z, row_means) / (torch.linalg.vector_norm(z) * torch.linalg.vector_norm(row_means)).clamp_min(1e-12)
            terms.append(1 - cosine)
        return torch.stack(terms).mean()

    def extra_repr(self) -> str:
        mode = "learned" if self.learned else "fixed"
        return f"terms={self.terms}, coefficients={mode}, stability_eps={self.stability_eps}, smoothness={self.smoothness_estimator}"


def hutchinson_jacobian_sq_norm(model: MappedModel, samples: int, noise: torch.Generator) -> Tensor:
    """Unbiased ``E_v ||J v||²`` of ``J = ∂G/∂z`` over all groups, Rademacher ``v``, one JVP per sample. ``G`` is
    the generator's flat vector, or its assembled tensors (each once) where the generator says the smoothness
    term is about those (``flat_smoothness`` False: fine-tuning's final weights)."""
    generator = model.generator
    latents = tuple(generator.latents)
    offsets = group_offsets(generator.layout)

    def flat_outputs(*zs: Tensor) -> tuple[Tensor, ...]:
        flats = [generator.generate(start, start + group.numel, zs) for start, group in zip(offsets, generator.layout.groups)]
        if generator.flat_smoothness:
            return tuple(flats)
        named = {}
        for flat, group in zip(flats, generator.layout.groups):
            named.update(views(flat, group.tensors))
        assembled = generator.assemble(named)
        return tuple(assembled[spec.name] for spec in generator.outputs)

    estimates = []
    for _ in range(samples):
        probes = tuple((torch.randint(0, 2, z.shape, generator=noise) * 2 - 1).to(z) for z in latents)
        _, tangents = torch.func.jvp(flat_outputs, latents, probes)
        estimates.append(sum(t.square().sum() for t in tangents))
    return torch.stack(estimates).mean()


class _Clock:
    """Wall time between laps, when timing is on (``time_terms``): ``True`` times the host (on a GPU the launch
    of the work, not the kernels), ``"sync"`` synchronises the device around each lap, so a lap covers its work."""

    def __init__(self, timing: bool | str, device: torch.device | None) -> None:
        self.timing, self.device = timing, device
        self.last = time.perf_counter()

    def record(self, seconds: dict[str, float], name: str) -> None:
        """Store the time since the last record under ``name`` (nothing when timing is off)."""
        if not self.timing:
            return
        if self.timing == "sync" and self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        seconds[name], self.last = now - self.last, now


def _device_of(output) -> torch.device | None:
    """The device of the first tensor in ``output`` (where the terms run, for a synchronised clock)."""
    return next((t.device for t in tree_leaves(output) if isinstance(t, Tensor)), None)
