"""Training, in parts with one concept each (DESIGN.md section 3):

- `build`: recipe -> objects (`build_model`, `build_loss`, `build_optimizer`) and `prepare`, which builds a
  whole run and checks it before anything is written;
- `checkpoint`: the one checkpoint schema (save, load, resume) and the mapping `fingerprint`; `rundir`: the run
  directory's files and `load_run`;
- `log`: metrics.jsonl, TensorBoard and the progress bar;
- `evaluate`: the task's metrics; `loop`: `train`, read top to bottom, and `train_step`, which benches share.
"""

from mapscale.train.build import (
    Prepared,
    build_loss,
    build_model,
    build_optimizer,
    epoch_batches,
    prepare,
    task_loss,
    trainable_parameters,
)
from mapscale.train.checkpoint import (
    CHECKPOINT,
    LATENT_START_FIELDS,
    checkpoint_model_state,
    fingerprint,
    load_checkpoint,
    mapping_identity,
    restore_model_state,
    save_checkpoint,
    start_latents,
)
from mapscale.train.evaluate import evaluate
from mapscale.train.log import read_records
from mapscale.train.loop import RunResult, model_loss, train, train_step
from mapscale.train.rundir import environment, load_run, new_run_dir, write_run_files

__all__ = [
    "CHECKPOINT", "LATENT_START_FIELDS", "Prepared", "RunResult", "build_loss", "build_model", "build_optimizer",
    "checkpoint_model_state", "environment", "epoch_batches", "evaluate", "fingerprint", "load_checkpoint", "load_run",
    "mapping_identity", "model_loss", "new_run_dir", "prepare", "read_records", "restore_model_state", "save_checkpoint",
    "start_latents", "task_loss", "train", "train_step", "trainable_parameters", "write_run_files",
]
