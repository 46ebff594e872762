"""Build the ``torchrun`` / ``deepspeed`` command that starts ``mapscale train`` on many ranks.

``mapscale launch`` prints what these functions build and runs it; nothing here re-implements a launcher.
Each rank runs ``python -m mapscale.cli train RECIPE OVERRIDES...`` and reads its rank, world size and
master address from the environment the launcher sets (``World.from_env()``).

    launch_command("recipes/mnist_cnn2.py", [], nproc=2)
    # ['torchrun', '--nproc-per-node', '2', '-m', 'mapscale.cli', 'train', 'recipes/mnist_cnn2.py']
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Literal

Launcher = Literal["torchrun", "deepspeed"]
LAUNCHERS: tuple[str, ...] = ("torchrun", "deepspeed")
DEFAULT_MASTER_PORT = 29500  # torchrun's and DeepSpeed's default


def launch_command(
    recipe: str,
    overrides: list[str],
    *,
    nproc: int,
    nnodes: int = 1,
    node_rank: int | None = None,
    master_addr: str | None = None,
    master_port: int = DEFAULT_MASTER_PORT,
    hostfile: str | None = None,
    launcher: Launcher = "torchrun",
    deepspeed_config: str | None = None,
    max_restarts: int = 0,
) -> list[str]:
    """The argv that starts ``mapscale train RECIPE OVERRIDES...`` on ``nproc`` ranks per node.

    ``torchrun`` starts the ranks of one node; on ``nnodes > 1`` the same command runs once on every node,
    each with its own ``node_rank`` and all with the address of node 0 (static rendezvous).
    ``deepspeed`` starts every node from one command through a ``hostfile`` (over ssh), or, given a
    ``node_rank``, only this node's ranks (``--no_ssh``; run it on every node). DeepSpeed's launcher
    calls processes per node ``--num_gpus``, also on its CPU accelerator.

    ``deepspeed_config`` adds the override ``distributed.deepspeed=PATH`` under either launcher: the
    recipe's ``distributed.deepspeed`` field, not the launcher, decides whether DeepSpeed's engine runs.
    Paths are kept as given; relative ones are read by every rank from the directory it starts in.

    ``max_restarts`` > 0 (torchrun only): torchrun restarts the worker group up to that many times when a rank
    fails, and the override ``output.resume=auto`` makes the restarted workers continue the run from its last
    checkpoint (`mapscale.train.rundir.continued_run_dir`). DeepSpeed's launcher restarts nothing.
    Raises ValueError, with the offending values, on an impossible request.
    """
    _check_request(recipe, nproc=nproc, nnodes=nnodes, node_rank=node_rank, master_port=master_port, hostfile=hostfile,
                   launcher=launcher, deepspeed_config=deepspeed_config, max_restarts=max_restarts)

    train = ["mapscale.cli", "train", recipe, *overrides]
    if deepspeed_config is not None:
        train.append(f"distributed.deepspeed={deepspeed_config}")
    if max_restarts and "--resume" not in overrides:  # (a restarted `train RUN_DIR --resume` continues already)
        train.append("output.resume=auto")  # restarted workers continue the run instead of starting another

    if launcher == "torchrun":
        if hostfile is not None:
            raise ValueError(
                f"a hostfile ({hostfile}) is for the deepspeed launcher; torchrun runs once per node: "
                "give each node its --node-rank and the --master-addr of node 0"
            )
        argv = ["torchrun", "--nproc-per-node", str(nproc)]
        if max_restarts:
            argv += ["--max-restarts", str(max_restarts)]
        if nnodes > 1:
            missing = [flag for flag, value in (("node_rank (--node-rank)", node_rank), ("master_addr (--master-addr)", master_addr)) if value is None]
            if missing:
                raise ValueError(
                    f"torchrun on {nnodes} nodes needs {' and '.join(missing)}: run the command once on every node, "
                    f"with node ranks 0..{nnodes - 1} and the address of node 0 as master address"
                )
            argv += ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--master-addr", master_addr, "--master-port", str(master_port)]
        elif master_port != DEFAULT_MASTER_PORT:  # a second job on the same machine needs its own port
            argv += ["--master-port", str(master_port)]
        return [*argv, "-m", *train]

    argv = ["deepspeed", "--num_gpus", str(nproc)]
    if nnodes > 1 and hostfile is None:
        raise ValueError(
            f"deepspeed on {nnodes} nodes needs a hostfile listing them (one 'host slots=N' line each, "
            "see launch/hostfile.example)"
        )
    if hostfile is not None:
        argv += ["--hostfile", hostfile]
    if hostfile is not None or nnodes > 1:  # without --num_nodes DeepSpeed uses every host in the hostfile
        argv += ["--num_nodes", str(nnodes)]
    if node_rank is not None and nnodes > 1:
        if master_addr is None:
            raise ValueError(
                f"deepspeed with node rank {node_rank} (each node started by hand, --no_ssh) needs master_addr, "
                "the address of node 0"
            )
        argv += ["--no_ssh", "--node_rank", str(node_rank)]
    if master_addr is not None:
        argv += ["--master_addr", master_addr]
    if master_port != DEFAULT_MASTER_PORT:
        argv += ["--master_port", str(master_port)]
    # --no_local_rank: DeepSpeed would otherwise put --local_rank=N before the Typer subcommand.
    return [*argv, "--no_local_rank", "--module", *train]


def _check_request(recipe: str, *, nproc: int, nnodes: int, node_rank: int | None, master_port: int, hostfile: str | None,
                   launcher: str, deepspeed_config: str | None, max_restarts: int) -> None:
    """Refuse an impossible `launch_command` request with the offending values (ValueError)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r} is not one of {', '.join(LAUNCHERS)}")
    if nproc < 1:
        raise ValueError(f"nproc {nproc} must be at least 1 process per node")
    if nnodes < 1:
        raise ValueError(f"nnodes {nnodes} must be at least 1")
    if node_rank is not None and not 0 <= node_rank < nnodes:
        raise ValueError(f"node rank {node_rank} is outside 0..{nnodes - 1} for {nnodes} node(s)")
    if not 1 <= master_port <= 65535:
        raise ValueError(f"master port {master_port} is outside 1..65535")
    if not Path(recipe).exists():
        raise ValueError(f"recipe {recipe} does not exist (a recipe .py, a recipe.json or a run directory)")
    if hostfile is not None and not Path(hostfile).is_file():
        raise ValueError(f"hostfile {hostfile} does not exist (see launch/hostfile.example)")
    if deepspeed_config is not None and not Path(deepspeed_config).is_file():
        raise ValueError(f"DeepSpeed config {deepspeed_config} does not exist (see launch/ds_zero1_bf16.json)")
    if max_restarts < 0:
        raise ValueError(f"max restarts {max_restarts} must be at least 0")
    if max_restarts and launcher == "deepspeed":
        raise ValueError(
            "the deepspeed launcher does not restart failed ranks (it has no --max-restarts); use --launcher torchrun, "
            "which restarts them while DeepSpeed's engine still trains (--deepspeed-config works under torchrun too)"
        )


def format_command(argv: list[str]) -> str:
    """The argv as one shell-quoted line, to print and paste."""
    return shlex.join(argv)


def find_launcher(name: str) -> str | None:
    """The launcher executable: next to this Python first (the virtual environment's bin), then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return shutil.which(name)


def run_command(argv: list[str]) -> int:
    """Run argv with inherited stdio and return its exit code (128 + signal when a signal ended it).

    Ctrl-C reaches the launcher from the terminal directly (same process group), and it stops its ranks
    after their current step with a checkpoint; this process waits for that instead of killing it.
    SIGTERM sent to this process alone is passed on.
    """
    process = subprocess.Popen(argv)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum))
    try:
        while True:
            try:
                returncode = process.wait()
                break
            except KeyboardInterrupt:
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 128 - returncode if returncode < 0 else returncode
