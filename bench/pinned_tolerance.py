"""How far the pinned runs (``tests/pinned_runs.py``) land from their pins on other CPU configurations, and how far
the smallest real behaviour changes move them: the tolerance of ``tests/test_pinned.py`` comes from here.

    python bench/pinned_tolerance.py --out bench/results/pinned_tolerance.md     # ~25 minutes on 2 cores
    python bench/pinned_tolerance.py --tier distributed                           # ~20 minutes: distributed_tolerance.md

**Configurations.** Every pinned case (CASES and TORCHRUN_CASES) trained in a fresh process under each of
thread count 1 and 2 (``OMP_NUM_THREADS``; per rank for the torchrun case), ``ATEN_CPU_CAPABILITY`` default,
avx2 and avx512 (those the CPU has) and oneDNN on and off (``torch.backends.mkldnn.enabled``): the kernels and
summation orders a user's machine may pick. The deviation of a number is ``|got - pinned| / |pinned|``; a case's
deviation is the largest over its records and fields, a configuration's the largest over its cases.

**Behaviour changes.** At the first configuration, each single-process case again with one small change: the
learning rate times 1.01, ``mapping.seed`` + 1 (the fixed mapping redrawn), ``seed`` + 1 (the target's init and
the data order), another operator (sparse for dense, seeded and structured, whose matrices seeded shares with dense; dense for sparse). The change's deviation is the largest over the case's
records and fields, ``lr`` itself left out (it shows a rate change trivially). The tolerance must stay at least
100 times below the smallest of them.

The tolerance is 10 times the largest deviation across configurations, rounded up to one significant digit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from pinned_runs import CASES, PINNED, RECIPE, TORCHRUN_CASES, case_overrides  # noqa: E402

CAPABILITIES = ("default", "avx2", "avx512")


def cpu_capabilities() -> list[str]:
    """The ``ATEN_CPU_CAPABILITY`` values this CPU can run (x86 flags; elsewhere only ``default``)."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return ["default"]
    return ["default", *(["avx2"] if "avx2" in flags else []), *(["avx512"] if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags else [])]


def configurations() -> list[dict[str, str]]:
    return [
        {"OMP_NUM_THREADS": threads, "ATEN_CPU_CAPABILITY": capability, "onednn": onednn}
        for threads in ("2", "1") for capability in reversed(cpu_capabilities()) for onednn in ("on", "off")
    ]


def label(config: dict[str, str]) -> str:
    return f"threads {config['OMP_NUM_THREADS']}, {config['ATEN_CPU_CAPABILITY']}, oneDNN {config['onednn']}"


def run(config: dict[str, str], cases: list[str], extra: list[str], out: Path) -> dict:
    """The cases' records, trained in a fresh process under ``config`` with ``extra`` overrides."""
    env = {**os.environ, "OMP_NUM_THREADS": config["OMP_NUM_THREADS"], "ATEN_CPU_CAPABILITY": config["ATEN_CPU_CAPABILITY"]}
    argv = [sys.executable, str(ROOT / "tests" / "pinned_runs.py"), "run", str(out), *cases]
    argv += ["--no-onednn"] if config["onednn"] == "off" else []
    argv += ["--", *extra] if extra else []
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{label(config)} {extra}: {done.stderr[-3000:]}")
    return json.loads(out.read_text())


def deviation(records: list[dict], pinned: list[dict], skip: tuple[str, ...] = ()) -> tuple[float, str]:
    """The largest relative difference over the records' float fields, and where (``step split field``)."""
    worst, where = 0.0, "-"
    for got, want in zip(records, pinned, strict=True):
        for key, value in want.items():
            if isinstance(value, float) and key not in skip:
                d = abs(got[key] - value) / abs(value) if value else abs(got[key])
                if d > worst:
                    worst, where = d, f"step {want['step']} {want['split']} {key}"
    return worst, where


def changes(folder: Path) -> dict[str, dict[str, list[str]]]:
    """``{change: {case: overrides}}`` of the behaviour changes each single-process case can take."""
    from mapscale.recipe import load_recipe

    out: dict[str, dict[str, list[str]]] = {"lr x 1.01": {}, "mapping.seed + 1": {}, "seed + 1": {}, "other operator": {}}
    for name in CASES:
        recipe = load_recipe(RECIPE, case_overrides(name, folder))
        out["lr x 1.01"][name] = [f"optim.lr={recipe.lr * 1.01!r}"]
        out["seed + 1"][name] = [f"seed={recipe.seed + 1}"]
        if recipe.mapping.method not in ("full", "lora"):  # full has no seed; LoRA's draws from `seed` (VeRA's from it)
            out["mapping.seed + 1"][name] = [f"mapping.seed={recipe.mapping.seed + 1}"]
        operator = getattr(recipe.mapping, "operator", None)
        if operator is not None:
            out["other operator"][name] = [f"mapping.operator={'dense' if operator == 'sparse' else 'sparse'}"]  # seeded is dense's matrix
    return out


def significant(value: float) -> float:
    """``value`` rounded up to one significant digit."""
    if value <= 0:
        return 0.0
    scale = 10 ** math.floor(math.log10(value))
    return math.ceil(value / scale) * scale


# The distributed tier under a few configurations (each run of it takes ~6 minutes on 2 cores): this machine's
# own, one thread without vector kernels, and AVX2 kernels for ATen and oneDNN alike.
DISTRIBUTED_CONFIGS = [
    {},
    {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default"},
    {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
]


def distributed_tier(out: Path) -> None:
    """Run ``pytest -m distributed`` under each of `DISTRIBUTED_CONFIGS` with ``MAPSCALE_DEVIATIONS`` set
    (``tests/tolerance.py``), and tabulate every check's largest needed tolerance against the one it allows."""
    needed: dict[str, float] = {}
    allowed: dict[str, float] = {}
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, config in enumerate(DISTRIBUTED_CONFIGS):
            record = Path(tmp) / f"deviations{i}.jsonl"
            env = {**os.environ, **config, "MAPSCALE_DEVIATIONS": str(record)}
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "distributed"], env=env, cwd=ROOT, capture_output=True, text=True)
            summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
            outcomes.append((config, summary))
            print(config or "this machine", summary, flush=True)
            for line in record.read_text().splitlines() if record.exists() else []:
                entry = json.loads(line)
                check = entry["check"].split("::", 1)[-1]
                needed[check] = max(needed.get(check, 0.0), entry["needed"])
                allowed[check] = entry["allowed"]
    lines = ["# Equivalence tolerances of the distributed tier\n",
             f"`python bench/pinned_tolerance.py --tier distributed` (CPU: {platform_cpu()}): `pytest -m distributed` under each "
             "configuration with `MAPSCALE_DEVIATIONS` set (`tests/tolerance.py`); for every check, the largest relative "
             "tolerance it needed over the configurations and the one it allows. A check must allow at least 10 times "
             "what it needed.\n", "| configuration | pytest |", "|---|---|"]
    lines += [f"| {' '.join(f'{k}={v}' for k, v in c.items()) or 'this machine (2 threads, its own kernels)'} | {summary} |" for c, summary in outcomes]
    lines += ["", "| check | needed (largest) | allowed | allowed / needed |", "|---|---|---|---|"]
    for check in sorted(needed, key=lambda c: -needed[c] / max(allowed[c], 1e-300)):
        ratio = allowed[check] / needed[check] if needed[check] else math.inf
        lines.append(f"| {check} | {needed[check]:.1e} | {allowed[check]:.0e} | {'exact' if ratio == math.inf else f'{ratio:.0f}'}{'' if ratio >= 10 else ' **< 10**'} |")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"needed": needed, "allowed": allowed}, indent=1) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pinned_tolerance.md")
    parser.add_argument("--cases", nargs="*", default=[*CASES, *TORCHRUN_CASES])
    parser.add_argument("--reuse-configurations", type=Path, help="the .json of an earlier run: its configurations, the changes measured again")
    parser.add_argument("--tier", choices=("pinned", "distributed"), default="pinned", help="distributed: the equivalence tolerances of `pytest -m distributed` (--out defaults to distributed_tolerance.md)")
    args = parser.parse_args()
    if args.tier == "distributed":
        distributed_tier(args.out if args.out != parser.get_default("out") else ROOT / "bench" / "results" / "distributed_tolerance.md")
        return
    pinned = json.loads(PINNED.read_text())
    configs = configurations()
    lines = [f"# Pinned runs across CPU configurations\n", f"`python bench/pinned_tolerance.py` ({len(configs)} configurations, "
             f"{len(args.cases)} cases; CPU: {platform_cpu()}). Relative deviation from `tests/pinned/metrics.json`.\n"]
    measured: dict = {"configurations": {}, "changes": {}}
    if args.reuse_configurations:  # the configurations of an earlier run of this bench (same pins), changes again
        measured["configurations"] = json.loads(args.reuse_configurations.read_text())["configurations"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, config in enumerate(configs if not args.reuse_configurations else []):
            records = run(config, args.cases, [], tmp / f"config{i}.json")
            measured["configurations"][label(config)] = {name: deviation(records[name], pinned[name]) for name in args.cases}
            print(label(config), max(d for d, _ in measured["configurations"][label(config)].values()), flush=True)
        lines += ["## Across configurations\n", "| configuration | largest deviation | case | where |", "|---|---|---|---|"]
        worst_overall, per_case = (0.0, "", "", ""), {}
        for config, by_case in measured["configurations"].items():
            worst = max(((d, name, where) for name, (d, where) in by_case.items()), default=(0.0, "-", "-"))
            for name, (d, _) in by_case.items():
                per_case[name] = max(per_case.get(name, 0.0), d)
            lines.append(f"| {config} | {worst[0]:.1e} | {worst[1] if worst[0] else '-'} | {worst[2]} |")
            worst_overall = max(worst_overall, (*worst, config))
        tolerance = significant(10 * worst_overall[0])
        lines += ["", "Largest per case, over every configuration: " + ", ".join(f"{n} {d:.1e}" for n, d in per_case.items()) + ".", "",
                  f"**Largest deviation: {worst_overall[0]:.2e}** ({worst_overall[1]}, {worst_overall[2]}, {worst_overall[3]}); "
                  f"**tolerance (10x, rounded up): {tolerance:.0e}**.\n"]

        lines += ["## Behaviour changes (first configuration)\n", "| change | smallest deviation | case | where | / tolerance |", "|---|---|---|---|---|"]
        smallest_ratio = math.inf
        for change, by_case in changes(tmp).items():
            per = {}
            for name, extra in by_case.items():
                records = run(configs[0], [name], extra, tmp / "change.json")[name]
                per[name] = deviation(records, pinned[name], skip=("lr",))
            name = min(per, key=lambda n: per[n][0])
            d, where = per[name]
            measured["changes"][change] = per
            ratio = d / tolerance if tolerance else math.inf
            smallest_ratio = min(smallest_ratio, ratio)
            lines.append(f"| {change} | {d:.1e} | {name} | {where} | {ratio:.1e} |")
            print(lines[-1], flush=True)
        lines += ["", f"The smallest behaviour change is {smallest_ratio:.1e} times the tolerance "
                  f"({'at least' if smallest_ratio >= 100 else 'LESS than'} the 100 the tolerance must leave).\n"]
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"tolerance": tolerance, **measured}, indent=1) + "\n")
    print(f"wrote {args.out}")


def platform_cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
