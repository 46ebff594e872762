"""Behaviour kept: short runs of every method log the numbers pinned before the generator-contract refactor
(`tests/pinned_runs.py` recorded them). Floats agree to 1e-6 relative; integers and keys exactly."""

import json
import math

import pytest

from pinned_runs import CASES, PINNED, RECIPE, TORCHRUN_CASES, case_overrides, pinned_records, run_case, run_torchrun_case

EXPECTED = json.loads(PINNED.read_text())


def assert_same_records(records: list[dict], expected: list[dict]) -> None:
    assert [sorted(r) for r in records] == [sorted(r) for r in expected]
    assert len({r.get("task") for r in expected if r["split"] == "train"}) > 1, "a pinned run must move"
    for got, want in zip(records, expected, strict=True):
        for key, value in want.items():
            if isinstance(value, float):
                assert math.isclose(got[key], value, rel_tol=1e-6, abs_tol=1e-12), (got["step"], got["split"], key, got[key], value)
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
        assert math.isclose(got, want, rel_tol=1e-6), (losses, expected)
