"""The output folder of a `run_finetune.py` training run: when it may be written into, and which of its `checkpoint-N`
folders a run can resume from.

- `prepare_output_dir`: transformers' convention (a non-empty folder is refused unless `--overwrite_output_dir`, which
  clears it, or a resume); a folder holding the data, the starting point or the working directory is never cleared.
- `resolve_resume_checkpoint`: `--resume_from_checkpoint True` (or an output folder) -> its last *complete*
  `checkpoint-N`; a named checkpoint must be complete (`checkpoint_problems` says what a folder lacks).
"""

import json
import logging
import re
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

from transformers import TrainingArguments

from .checkpoint_io import CheckpointError, load_checkpoint_file
from .training import FinetuneError

logger = logging.getLogger(__name__)

# What a checkpoint-N folder needs for `Trainer.train(resume_from_checkpoint=...)`, each as alternative names (plain /
# FSDP full / FSDP sharded); trainer_state.json is written last.
CHECKPOINT_PARTS = {
    "weights": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model_fsdp.bin",
                "pytorch_model_fsdp_0"),
    "config": ("config.json",),
    "training arguments": ("training_args.bin",),
    "optimizer state": ("optimizer.pt", "optimizer.bin", "optimizer_0"),
    "scheduler state": ("scheduler.pt",),
    "trainer state": ("trainer_state.json",),
}
SINGLE_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # read whole by `checkpoint_problems`
CHECKPOINT_NAME = re.compile(r"checkpoint-\d+")


def checkpoint_problems(folder: Path) -> list[str]:
    """What keeps a Trainer `checkpoint-N` folder from being resumed (missing, empty or truncated files); [] if none."""
    problems = [f"no {names[0]}" if len(names) == 1 else f"no {part} ({' / '.join(names)})"
                for part, names in CHECKPOINT_PARTS.items() if not any((folder / name).exists() for name in names)]
    problems += [f"{path.name} is empty" for path in sorted(folder.iterdir()) if path.is_file()
                 and path.stat().st_size == 0]
    for weights in (folder / name for name in SINGLE_WEIGHTS_FILES):
        if weights.is_file() and weights.stat().st_size > 0:
            try:  # the checkpoint reader of the converter: safe loading, truncation reported by name
                load_checkpoint_file(weights)
            except CheckpointError:
                problems.append(f"{weights.name} is unreadable (truncated or damaged)")
    rng_states = sorted(folder.glob("rng_state*.pth"))
    if not rng_states:
        problems.append("no rng_state.pth")
    for path in [folder / "optimizer.pt", folder / "scheduler.pt", *rng_states]:  # torch.save ZIP archives
        if path.is_file() and path.stat().st_size > 0 and not zipfile.is_zipfile(path):
            problems.append(f"{path.name} is truncated")
    state = folder / "trainer_state.json"
    if state.is_file() and state.stat().st_size > 0:
        try:
            json.loads(state.read_text())
        except ValueError:
            problems.append("trainer_state.json is truncated")
    return problems


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.rsplit("-", 1)[1])


def checkpoints_in(output_dir: Path) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, N ascending."""
    folders = output_dir.glob("checkpoint-*")
    return sorted((path for path in folders if path.is_dir() and CHECKPOINT_NAME.fullmatch(path.name)),
                  key=checkpoint_step)


def last_complete_checkpoint(output_dir: Path) -> Path:
    """The complete `checkpoint-N` of `output_dir` with the largest N; incomplete later ones are logged and skipped."""
    folders = checkpoints_in(output_dir)[::-1]
    if not folders:
        raise FinetuneError(f"Nothing to resume: {output_dir} has no checkpoint-N folder (save them with "
                                "--save_strategy steps/epoch).")
    for folder in folders:
        problems = checkpoint_problems(folder)
        if not problems:
            return folder
        logger.warning(f"Not resuming from {folder}: incomplete ({', '.join(problems)}; a run stopped while "
                       "writing it?)")
    raise FinetuneError(f"Nothing to resume: no checkpoint in {output_dir} is complete ("
                            + "; ".join(f"{f.name}: {', '.join(checkpoint_problems(f))}" for f in folders) + ").")


def check_named_checkpoint(folder: Path) -> None:
    """Refuse an incomplete `checkpoint-N` named by the user, pointing to the last complete one beside it."""
    problems = checkpoint_problems(folder)
    if problems:
        complete = [path for path in checkpoints_in(folder.parent) if not checkpoint_problems(path)]
        hint = (f"resume from {complete[-1]} (the last complete one)" if complete
                else "no complete checkpoint is left beside it")
        raise FinetuneError(f"Checkpoint {folder} is incomplete ({', '.join(problems)}; a run stopped while "
                                f"writing it?): {hint}.")


def resolve_resume_checkpoint(value: str | None, output_dir: str) -> str | None:
    """
    The checkpoint folder to resume from for `--resume_from_checkpoint value`: `True` (or an output folder) picks its
    last complete `checkpoint-N`, saying which and why; a named checkpoint must be complete. None: no resume.
    """
    if value is None or str(value).lower() == "false":
        return None
    if str(value).lower() == "true":
        folder = last_complete_checkpoint(Path(output_dir))
    else:
        folder = Path(value)
        if not folder.is_dir():
            raise FinetuneError(f"--resume_from_checkpoint {value} does not exist (give a checkpoint-N folder, "
                                    "or True for the last complete one in --output_dir).")
        if not CHECKPOINT_NAME.fullmatch(folder.name) and checkpoints_in(folder):
            folder = last_complete_checkpoint(folder)  # an output folder: its last complete checkpoint
        else:
            check_named_checkpoint(folder)
    logger.info(f"Resuming from {folder} (step {checkpoint_step(folder)}), the last complete checkpoint")
    return str(folder)


def prepare_output_dir(training_args: TrainingArguments, resuming: bool, protected: Sequence[str]) -> None:
    """
    transformers' convention for training into `--output_dir`: a non-empty folder is refused unless
    `--overwrite_output_dir` (which clears it, so no result or checkpoint of the previous run remains) or a resume.
    A folder holding one of the `protected` paths (the data, the starting point, the working directory) is never
    cleared.
    """
    output_dir = Path(training_args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FinetuneError(f"--output_dir {output_dir} exists and is not a folder.")
    if not output_dir.is_dir() or not any(output_dir.iterdir()) or resuming:
        return
    if not training_args.overwrite_output_dir:
        raise FinetuneError(
            f"--output_dir {output_dir} is not empty (a previous run?): pass --overwrite_output_dir to replace its "
            "contents, --resume_from_checkpoint True to continue its last checkpoint, or another --output_dir."
        )
    resolved = output_dir.resolve()
    for path in protected:
        if resolved == Path(path).resolve() or resolved in Path(path).resolve().parents:
            raise FinetuneError(f"--overwrite_output_dir would delete {path}, which is inside --output_dir "
                                    f"{output_dir}: choose another --output_dir.")
    with training_args.main_process_first(desc="clearing the output folder"):
        if training_args.local_process_index == 0:
            logger.warning(f"--overwrite_output_dir: removing the previous contents of {output_dir}")
            for path in output_dir.iterdir():
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
