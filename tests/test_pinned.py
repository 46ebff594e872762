"""Behaviour kept: short runs of every method log the numbers pinned in `tests/pinned/metrics.json`
(`tests/pinned_runs.py` records them; float64 runs). Floats agree to `REL_TOL` relative; integers and keys exactly.

`REL_TOL` is 10 times the largest deviation from the pins that `bench/pinned_tolerance.py` measured over 12 CPU
configurations (thread count 1 and 2, ATEN_CPU_CAPABILITY default / avx2 / avx512, oneDNN on and off; AMD EPYC):
2.6e-14 (`bench/results/pinned_tolerance.md`). The smallest behaviour change it measured, a 1% change of the
learning rate, moves a pinned number by 1.9e-6: 6e6 times the tolerance. `.ci/run` runs this file a second time
with one thread and ATEN_CPU_CAPABILITY=default."""

import json
import math

import pytest

from pinned_runs import CASES, PINNED, RECIPE, TORCHRUN_CASES, case_overrides, pinned_records, run_case, run_torchrun_case

EXPECTED = json.loads(PINNED.read_text())
REL_TOL = 3e-13


def assert_same_records(records: list[dict], expected: list[dict]) -> None:
    assert [sorted(r) for r in records] == [sorted(r) for r in expected]
    assert len({r.get("task") for r in expected if r["split"] == "train"}) > 1, "a pinned run must move"
    for got, want in zip(records, expected, strict=True):
        for key, value in want.items():
            if isinstance(value, float):
                assert math.isclose(got[key], value, rel_tol=REL_TOL, abs_tol=0.0), (got["step"], got["split"], key, got[key], value)
            else:
                assert got[key] == value, (key, got[key], value)


@pytest.mark.parametrize("name", sorted(CASES))
def test_pinned_run_logs_the_recorded_numbers(name, tmp_path):
    assert_same_records(run_case(name, tmp_path), EXPECTED[name])


@pytest.mark.distributed
@pytest.mark.parametrize("name", sorted(TORCHRUN_CASES))
def test_pinned_torchrun_run_logs_the_recorded_numbers(name, tmp_path):
    assert_same_records(run_torchrun_case(name, tmp_path), EXPECTED[name])


@pytest.mark.parametrize("name", ["lwt", "rpg", "full"])
def test_tiny_recipes_through_the_cli_log_the_pinned_first_five_losses(name, tmp_path):
    """Integration: `mapscale train` itself (argument parsing, overrides, run directory, trainer) on 3 tiny runs."""
    from typer.testing import CliRunner

    from mapscale.cli import app

    result = CliRunner().invoke(app, ["train", str(RECIPE), *case_overrides(name, tmp_path)])
    assert result.exit_code == 0, result.output
    losses = [r["task"] for r in pinned_records(tmp_path / name) if r["split"] == "train"][:5]
    expected = [r["task"] for r in EXPECTED[name] if r["split"] == "train"][:5]
    assert len(losses) == 5 and len(set(expected)) == 5
    for got, want in zip(losses, expected):
        assert math.isclose(got, want, rel_tol=REL_TOL), (losses, expected)
