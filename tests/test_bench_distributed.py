"""bench/distributed.py in its reduced mode (CNN2 LWT 256 on 1 and 2 gloo ranks): the tables are printed, the
2 ranks hold the single process's mapping between them, and their first loss is the single process's."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the ranks are spawned processes: they import the bench by this name

import distributed as bench  # noqa: E402
import pytest
from tolerance import assert_close

pytestmark = pytest.mark.distributed  # several local processes (gloo): `pytest -m distributed`


def test_distributed_bench_quick(capsys, tmp_path):
    out_file = tmp_path / "distributed.md"
    runs = bench.main(["--quick", "--out", str(out_file)])
    out = capsys.readouterr().out

    rows = {line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")}
    assert {"1", "2", "8", "64", "N = 1, 2 threads", "N = 1, 1 thread", "N = 2, 1 thread each"} <= rows
    assert "python bench/distributed.py --quick" in out_file.read_text()

    single, ranks = runs[1][0], runs[2]
    assert sum(r["mapping_bytes"] for r in ranks) == single["mapping_bytes"]
    assert all(r["mapping_bytes"] <= 0.6 * single["mapping_bytes"] for r in ranks)
    reference = single["series"][1]["losses"][0]  # one process on one thread: the ranks' summation order
    sharded = ranks[0]["series"][1]["losses"][0]
    assert_close(sharded, reference, rtol=1e-5, what="first loss")
