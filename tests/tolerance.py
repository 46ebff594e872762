"""Equivalence checks that say how close they came.

``assert_close`` is ``torch.testing.assert_close`` and ``assert_norm_close`` a relative L2 check; when the
environment variable ``MAPSCALE_DEVIATIONS`` names a file, each call first appends one JSON line to it: the
check (the test's id and ``what``), the relative tolerance the check would have needed and the one it allows.
``python bench/pinned_tolerance.py --tier distributed`` runs the distributed tier under several CPU
configurations with it set, and every tolerance of that tier is set from the largest deviation it recorded
(``bench/results/distributed_tolerance.md``).
"""

from __future__ import annotations

import json
import os

import torch

DEVIATIONS = "MAPSCALE_DEVIATIONS"


def _record(what: str, needed: float, allowed: float) -> None:
    path = os.environ.get(DEVIATIONS)
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
    with open(path, "a") as out:
        out.write(json.dumps({"check": f"{test} {what}", "needed": needed, "allowed": allowed}) + "\n")


def assert_close(actual, expected, *, rtol: float, atol: float = 0.0, what: str) -> None:
    """``torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)``; records the smallest ``rtol`` that
    would pass at this ``atol`` (``what`` names the quantity within the test)."""
    a = torch.as_tensor(actual, dtype=torch.float64)
    e = torch.as_tensor(expected, dtype=torch.float64)
    excess = ((a - e).abs() - atol).clamp_min(0)
    needed = torch.where(excess > 0, excess / e.abs(), torch.zeros_like(excess)).max().item() if excess.numel() else 0.0
    _record(what, needed, rtol)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def assert_norm_close(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, what: str) -> None:
    """``||actual - expected|| <= rtol ||expected||`` (vectors such as latents, compared as a whole)."""
    a, e = actual.detach().double(), expected.detach().double()
    needed = ((a - e).norm() / e.norm()).item() if e.norm() > 0 else (a - e).norm().item()
    _record(what, needed, rtol)
    assert needed <= rtol, f"{what}: relative L2 difference {needed:.3e} exceeds {rtol:.1e}"
