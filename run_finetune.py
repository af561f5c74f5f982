#!/usr/bin/env python
"""Fine-tune and evaluate INTR (the Interpretable Transformer) with the Hugging Face `Trainer`, on one device or many
through `accelerate launch`.

Data: the reference layout `ROOT/NAME/{train,val[,test]}/<class>/<image>` (`--dataset_path ROOT --dataset_name NAME`;
classes = sorted folder names), or a Hub dataset `--dataset_name` without `--dataset_path`. Starting points
(`--model_name_or_path`): an INTR folder or Hub repo (e.g. written by `convert_detr_checkpoint.py`), a DETR / INTR
`.pth` or a Hugging Face DETR folder (converted on the fly), or `--config_name CONFIG` to train from scratch.
The defaults are the reference's recipe: AdamW, lr 5e-5 (transformer, queries) and 1e-5 (backbone), weight decay
1e-6, StepLR x0.1 at epoch 80, gradient clipping 0.1, 140 epochs, batch 12 per device, seed 42, and the reference's
multi-scale augmentation (or `--fixed_size N` square batches).

`--do_eval` alone evaluates (the reference's `--eval`): acc@1 / acc@5 over the whole split, each image counted once
across processes, written with the counts of images evaluated and skipped to `OUT/eval_results.json`. After
training, `OUT` is a complete Hub repo (weights, config with labels, processor, code bundle, an INTR model card with
the recipe used and the eval results); `--push_to_hub` pushes it. A non-empty `OUT` needs `--overwrite_output_dir`
or `--resume_from_checkpoint` (a checkpoint-N folder, or True for the last complete one). Bad input (data,
starting point, output folder, checkpoint) stops the command with one `error: ...` line.
"""

import argparse
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from modeling_intr import IntrConfig, IntrForImageClassification, IntrImageProcessor
from modeling_intr.checkpoints import CheckpointError
from modeling_intr.model_card import intr_model_card

TRAINING_EXTRAS = ("datasets", "evaluate", "accelerate")
try:
    import accelerate  # noqa: F401  (the Trainer's engine)
    import datasets
    import evaluate

    from modeling_intr.data import DataError, ImageTransform, TrainAugmentation, collate_images, load_image_splits
except ImportError as error:
    if error.name not in TRAINING_EXTRAS:
        raise
    _message = (f"run_finetune.py needs the training extras ({error.name} is not installed): "
                "pip install 'intr-transformers[train]'")
    if __name__ == "__main__":
        sys.exit(f"error: {_message}")
    raise ImportError(_message, name=error.name) from error

logger = logging.getLogger(__name__)

TOPK_METRIC = Path(__file__).resolve().parent / "metrics" / "topk_accuracy"
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
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
NATIVE_BF16_CPU_FLAGS = frozenset(("avx512_bf16", "amx_bf16", "bf16"))  # x86 AVX-512 / AMX, ARMv8.6 (`Features`)


class FinetuneError(ValueError):
    """An input `run_finetune.py` cannot work with: the message names the problem and the fix."""


# Failures a user can cause and fix; the command line prints them as one `error: ...` line.
EXPECTED_ERRORS = (FinetuneError, DataError, CheckpointError)


@dataclass
class ModelArguments:
    _argument_group_name = "INTR model"

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Starting point: an INTR folder or Hub repo, a DETR / INTR .pth, an HF DETR folder or weights file."
        },
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "Train from scratch instead: an IntrConfig JSON file or folder (labels come from the data)."},
    )
    backbone_learning_rate: float = field(default=1e-5, metadata={"help": "Learning rate of the backbone."})
    reinit_class_queries: bool = field(
        default=False,
        metadata={"help": "Re-initialise the class queries (and labels) when the model's classes differ from the data's."},
    )
    lr_drop: int = field(
        default=80,
        metadata={"help": "Multiply the learning rates by 0.1 every lr_drop epochs (the reference's StepLR); 0 uses "
                          "--lr_scheduler_type instead (e.g. cosine_with_min_lr with min_lr 1e-6)."},
    )


@dataclass
class DataArguments:
    _argument_group_name = "INTR data"

    dataset_name: str = field(metadata={"help": "Folder name under --dataset_path, or a Hub dataset name."})
    dataset_path: str | None = field(
        default=None, metadata={"help": "ROOT of the reference layout ROOT/NAME/{train,val[,test]}/<class>/<image>."}
    )
    fixed_size: int | None = field(
        default=None, metadata={"help": "Resize every image to N x N (fast square batches) instead of multi-scale."}
    )
    strict_images: bool = field(
        default=False, metadata={"help": "Stop on any unreadable image or non-image file instead of skipping it."}
    )
    flip_prob: float = field(default=0.5, metadata={"help": "Probability of the random horizontal flip."})
    train_split: str = field(default="train", metadata={"help": "Training split (the 'train' folder)."})
    eval_split: str = field(default="validation", metadata={"help": "Evaluation split ('val' folder: validation)."})


@dataclass
class IntrTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the reference INTR recipe as defaults."""

    _argument_group_name = "Trainer (transformers TrainingArguments; defaults: the reference recipe)"

    learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate of the transformer and queries."})
    weight_decay: float = field(default=1e-6, metadata={"help": "AdamW weight decay (all parameters)."})
    max_grad_norm: float = field(default=0.1, metadata={"help": "Gradient clipping norm."})
    num_train_epochs: float = field(default=140.0, metadata={"help": "Number of training epochs."})
    per_device_train_batch_size: int = field(default=12, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=12, metadata={"help": "Evaluation batch size per device."})
    seed: int = field(default=42, metadata={"help": "Random seed (model init, data order, augmentation)."})
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Scheduler when --lr_drop 0 (the step drop applies on top of constant)."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the image column for the transform."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Training into a non-empty --output_dir replaces its contents (a previous run's weights, "
                          "results and checkpoints); without it such a folder is refused unless resuming."},
    )


def parameter_groups(model: torch.nn.Module, learning_rate: float, backbone_learning_rate: float,
                     weight_decay: float) -> list[dict]:
    """The reference's two AdamW groups: trainable non-backbone parameters, then trainable backbone parameters."""
    groups = {False: [], True: []}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups[re.search(r"(^|\.)backbone\.", name) is not None].append(parameter)
    return [
        {"params": groups[False], "lr": learning_rate, "weight_decay": weight_decay},
        {"params": groups[True], "lr": backbone_learning_rate, "weight_decay": weight_decay},
    ]


class IntrTrainer(Trainer):
    """`Trainer` with the reference optimizer groups (backbone learning rate) and its step learning-rate drop."""

    def __init__(self, *args, backbone_learning_rate: float, lr_drop: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.backbone_learning_rate = backbone_learning_rate
        self.lr_drop = lr_drop

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            groups = parameter_groups(model, self.args.learning_rate, self.backbone_learning_rate,
                                      self.args.weight_decay)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The reference's `StepLR(lr_drop)` counted in optimizer steps (the Trainer steps it once per update)."""
        if self.lr_drop <= 0 or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer if optimizer is None else optimizer, step_size=self.lr_drop * self.steps_per_epoch(),
            gamma=0.1,
        )
        return self.lr_scheduler

    def create_model_card(self, *args, **kwargs) -> None:
        """Keep the INTR card `write_model_card` wrote (`push_to_hub` would replace it with the generic one)."""

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch on each process (the dataloader's length over gradient accumulation)."""
        batches = len(self.train_dataset) / (self.args.train_batch_size * self.args.world_size)
        batches = math.floor(batches) if self.args.dataloader_drop_last else math.ceil(batches)
        return max(batches // self.args.gradient_accumulation_steps, 1)


def labels_of(config) -> list[str]:
    return [config.id2label[index] for index in range(config.num_labels)]


def first_line(error: BaseException) -> str:
    """An exception's message in one line (libraries' multi-line texts reduced to their first non-empty line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def needs_conversion(path: str) -> bool:
    """A checkpoint file (DETR / INTR `.pth`, an HF DETR `.bin` / `.safetensors`) or an HF DETR folder, not INTR."""
    if Path(path).is_file():
        return True
    config = Path(path) / "config.json"
    try:
        return config.is_file() and json.loads(config.read_text()).get("model_type") == "detr"
    except ValueError:  # not JSON: `load_config` reports it
        return False


def could_be_hub_repo(name: str) -> bool:
    """`name` has the shape of a Hub repo id (`name` or `owner/name`), not of a local path or file."""
    return (re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None and not name.startswith((".", "-"))
            and not name.endswith((".pth", ".pt", ".bin", ".safetensors", ".json")))


def check_starting_point(path: str) -> None:
    """Refuse, naming the problem, a `--model_name_or_path` that is missing or a local folder that cannot be a model."""
    local = Path(path).expanduser()
    if not local.exists():
        if not could_be_hub_repo(path):
            raise FinetuneError(f"--model_name_or_path {path} does not exist (no such file or folder).")
        return  # a Hub repo id: from_pretrained reports a failed download
    if local.is_file():
        if local.stat().st_size == 0:
            raise FinetuneError(f"Checkpoint {path} is empty (0 bytes): the download or copy did not finish.")
        return
    if not (local / "config.json").is_file():
        raise FinetuneError(f"Folder {path} has no config.json: not a model folder (expected an INTR folder from "
                            "run_finetune.py or convert_detr_checkpoint.py, a Hugging Face DETR folder, or a .pth).")
    weights = [local / name for name in WEIGHTS_FILES if (local / name).is_file()]
    if not weights:
        raise FinetuneError(f"Folder {path} has no weights (none of {', '.join(WEIGHTS_FILES)}): copy them into it.")
    if weights[0].stat().st_size == 0:
        raise FinetuneError(f"{weights[0]} is empty (0 bytes): the download or copy did not finish.")


def load_config(path: str) -> IntrConfig:
    """The INTR config of a folder or Hub repo, one line of error for anything else."""
    try:
        config = transformers.PretrainedConfig.get_config_dict(path)[0]
    except (OSError, ValueError) as error:
        where = "is not a local folder and could not be loaded from the Hub" if not Path(path).exists() else \
            "could not be read"
        raise FinetuneError(f"--model_name_or_path {path} {where} ({first_line(error)}).") from None
    if config.get("model_type") != IntrConfig.model_type:
        raise FinetuneError(f"{path} holds a {config.get('model_type')!r} model, not INTR: give an INTR folder or "
                            "repo, a DETR / INTR checkpoint (converted on the fly), or --config_name.")
    return IntrConfig.from_dict(config)


def load_model(model_args: ModelArguments, classes: list[str], seed: int = 42) -> IntrForImageClassification:
    """The starting point, with one class query per data class (see `ModelArguments`); its weights are read once."""
    id2label = dict(enumerate(classes))
    label2id = {label: index for index, label in id2label.items()}
    if model_args.config_name is not None:
        try:
            config = IntrConfig.from_pretrained(model_args.config_name, id2label=id2label, label2id=label2id)
        except (OSError, ValueError) as error:
            raise FinetuneError(f"--config_name {model_args.config_name}: {first_line(error)}") from None
        return IntrForImageClassification(config)
    path = model_args.model_name_or_path
    check_starting_point(path)
    if needs_conversion(path):  # converted on the fly by the converter (convert_detr_checkpoint.py's function)
        from modeling_intr.convert import convert_to_model

        try:
            return convert_to_model(path, id2label=id2label, reinit_class_queries=model_args.reinit_class_queries,
                                    seed=seed)
        except CheckpointError:
            raise
        except ValueError as error:  # the checkpoint's classes and the data's disagree
            raise FinetuneError(f"{' '.join(str(error).split())} (or pass --reinit_class_queries to train new "
                                "class queries for the data's classes)") from None
    config = load_config(path)
    new_classes = labels_of(config) != classes
    if new_classes and not model_args.reinit_class_queries:
        raise FinetuneError(
            f"The model's classes differ from the data's (sorted class folder names): model ({config.num_labels}): "
            f"{labels_of(config)}; data ({len(classes)}): {classes}. Pass --reinit_class_queries to train new class "
            "queries for the data's classes."
        )
    if new_classes:
        config.id2label, config.label2id = id2label, label2id
    try:
        model = IntrForImageClassification.from_pretrained(path, config=config, ignore_mismatched_sizes=new_classes)
    except MemoryError:
        raise
    except Exception as error:  # truncated or foreign weights, an unsafe pickle, a failed download: one line
        raise FinetuneError(f"Cannot load the weights of {path}: {first_line(error)}") from None
    if new_classes:
        torch.nn.init.normal_(model.model.class_queries.weight)  # the reference initialisation of the queries
    return model


def load_image_processor(model_args: ModelArguments, data_args: DataArguments) -> IntrImageProcessor:
    """The starting point's processor when it has one (else the reference default), with `--fixed_size` applied."""
    overrides = {"size": {"height": data_args.fixed_size, "width": data_args.fixed_size}} if data_args.fixed_size else {}
    path = model_args.model_name_or_path
    if path is not None and not needs_conversion(path):
        has_processor = not Path(path).is_dir() or (Path(path) / "preprocessor_config.json").is_file()
        if has_processor:
            return IntrImageProcessor.from_pretrained(path, **overrides)
    return IntrImageProcessor(**overrides)


def weights_checksum(model: torch.nn.Module) -> str:
    """SHA-256 of every state-dict tensor (names sorted): equal on all processes after data-parallel training."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_compute_metrics():
    metric = evaluate.load(str(TOPK_METRIC), keep_in_memory=True)

    def compute_metrics(eval_prediction) -> dict:
        logits, labels = eval_prediction.predictions, eval_prediction.label_ids
        results = metric.compute(predictions=logits, references=labels, k=(1, 5))
        return {**results, "num_images": len(labels)}

    return compute_metrics


# ----------------------------------------------------------------------------------------------- checkpoints


def checkpoint_problems(folder: Path) -> list[str]:
    """What keeps a Trainer `checkpoint-N` folder from being resumed (missing, empty or truncated files); [] if none."""
    problems = [f"no {names[0]}" if len(names) == 1 else f"no {part} ({' / '.join(names)})"
                for part, names in CHECKPOINT_PARTS.items() if not any((folder / name).exists() for name in names)]
    problems += [f"{path.name} is empty" for path in sorted(folder.iterdir()) if path.is_file()
                 and path.stat().st_size == 0]
    weights = folder / "model.safetensors"
    if weights.is_file() and weights.stat().st_size > 0:
        from safetensors import safe_open

        try:
            with safe_open(weights, "pt") as file:
                file.keys()
        except Exception as error:  # safetensors reports a truncated file with its own error types
            problems.append(f"{weights.name} is unreadable ({first_line(error)})")
    rng_states = sorted(folder.glob("rng_state*.pth"))
    if not rng_states:
        problems.append("no rng_state.pth")
    for path in [folder / "optimizer.pt", folder / "scheduler.pt", *rng_states]:
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


def last_complete_checkpoint(output_dir: Path) -> Path:
    """The complete `checkpoint-N` of `output_dir` with the largest N; incomplete later ones are logged and skipped."""
    folders = sorted((path for path in output_dir.glob("checkpoint-*") if path.is_dir()
                      and re.fullmatch(r"checkpoint-\d+", path.name)), key=checkpoint_step, reverse=True)
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


def resolve_resume_checkpoint(value: str | None, output_dir: str) -> str | None:
    """
    The checkpoint folder to resume from for `--resume_from_checkpoint value`: `True` (or an output folder) picks its
    last complete `checkpoint-N`, saying which and why; a named checkpoint must be complete.
    """
    if value is None or str(value).lower() == "false":
        return None
    if str(value).lower() == "true":
        folder = last_complete_checkpoint(Path(output_dir))
    else:
        folder = Path(value)
        if not folder.is_dir():
            raise FinetuneError(f"--resume_from_checkpoint {value} does not exist (give a checkpoint-N folder, or "
                                "True for the last complete one in --output_dir).")
        if not re.fullmatch(r"checkpoint-\d+", folder.name) and any(folder.glob("checkpoint-*")):
            folder = last_complete_checkpoint(folder)  # an output folder: its last complete checkpoint
        else:
            problems = checkpoint_problems(folder)
            if problems:
                complete = [path.name for path in sorted(folder.parent.glob("checkpoint-*"), key=checkpoint_step)
                            if re.fullmatch(r"checkpoint-\d+", path.name) and not checkpoint_problems(path)]
                hint = (f"resume from {folder.parent / complete[-1]} (the last complete one)" if complete
                        else "no complete checkpoint is left beside it")
                raise FinetuneError(f"Checkpoint {folder} is incomplete ({', '.join(problems)}; a run stopped while "
                                    f"writing it?): {hint}.")
    logger.info(f"Resuming from {folder} (step {checkpoint_step(folder)}), the last complete checkpoint")
    return str(folder)


# ----------------------------------------------------------------------------------------------- output folder


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


def write_text_atomically(path: Path, text: str) -> None:
    """Write `path` through a temporary sibling and a rename: readers see the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def recipe(trainer: IntrTrainer, model_args: ModelArguments, data_args: DataArguments, num_images: int,
           num_skipped: int) -> list[tuple[str, str]]:
    """The training recipe this run actually used, as model-card table rows."""
    args = trainer.args
    if model_args.lr_drop > 0:
        schedule = (f"StepLR: learning rates x0.1 every {model_args.lr_drop} epochs "
                    f"({model_args.lr_drop * trainer.steps_per_epoch()} optimizer steps)")
    else:
        schedule = f"{args.lr_scheduler_type.value}" + (f", warmup {args.warmup_steps}" if args.warmup_steps else "")
    augmentation = (f"resize to {data_args.fixed_size}x{data_args.fixed_size}" if data_args.fixed_size else
                    "the reference multi-scale resize / crop (shorter side 480-800, longer <= 1333)")
    precision = "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "float32"
    frozen = trainer.model.config.frozen_backbone_stages
    return [
        ("Script", "`run_finetune.py` (transformers `Trainer`)"),
        ("Training data", f"`{data_args.dataset_name}`, split `{data_args.train_split}`: {num_images} images"
                          + (f" ({num_skipped} unreadable files skipped)" if num_skipped else "")),
        ("Optimizer", f"AdamW, learning rate {args.learning_rate:g} (transformer, class queries, presence head) and "
                      f"{model_args.backbone_learning_rate:g} (backbone), weight decay {args.weight_decay:g}"),
        ("Schedule", schedule),
        ("Length", f"{trainer.state.epoch:g} epochs ({trainer.state.global_step} optimizer steps)"),
        ("Batch", f"{args.per_device_train_batch_size} per device x {args.world_size} processes x "
                  f"{args.gradient_accumulation_steps} accumulation = "
                  f"{args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps}"),
        ("Gradient clipping", f"{args.max_grad_norm:g}"),
        ("Augmentation", f"horizontal flip p={data_args.flip_prob:g}, {augmentation}"),
        ("Frozen backbone stages", ", ".join(frozen) if frozen else "none"),
        ("Precision", precision),
        ("Seed", str(args.seed)),
    ]


def write_model_card(trainer: IntrTrainer, model_args: ModelArguments, data_args: DataArguments, data,
                     eval_metrics: dict | None) -> None:
    """The output folder's README.md: an INTR card (origin, recipe, classes, eval results, how to load)."""
    start = model_args.model_name_or_path
    if start is None:
        origin = (f"Trained from scratch (configuration `{Path(model_args.config_name).name}`) with "
                  f"`run_finetune.py` on `{data_args.dataset_name}`.")
    elif needs_conversion(start):
        origin = (f"Fine-tuned with `run_finetune.py` on `{data_args.dataset_name}`, starting from the checkpoint "
                  f"`{Path(start).name}` converted on the fly by the INTR converter.")
    else:
        origin = f"Fine-tuned with `run_finetune.py` on `{data_args.dataset_name}`, starting from `{start}`."
    hub_start = start is not None and not Path(start).exists()
    eval_results = None
    if eval_metrics is not None:
        eval_results = {"acc@1": eval_metrics["eval_acc@1"], "acc@5": eval_metrics["eval_acc@5"],
                        "loss": eval_metrics["eval_loss"], "images evaluated": eval_metrics["eval_num_images"],
                        "unreadable files skipped": eval_metrics["eval_num_skipped"]}
    args = trainer.args
    details = recipe(trainer, model_args, data_args, len(trainer.train_dataset),
                     len(data.skipped[data_args.train_split]))
    if eval_metrics is not None:
        details.append(("Evaluation data", f"`{data_args.dataset_name}`, split `{data_args.eval_split}`"))
    card = intr_model_card(trainer.model.config, origin=origin, details=details, eval_results=eval_results,
                           base_model=start if hub_start else None,
                           datasets=[data_args.dataset_name] if data_args.dataset_path is None else (),
                           repo_id=args.hub_model_id if args.push_to_hub else None)
    write_text_atomically(Path(args.output_dir) / "README.md", str(card))


# ----------------------------------------------------------------------------------------------- environment


def cpu_flags() -> set[str]:
    """The CPU's feature flags (`/proc/cpuinfo` flags / Features) and PyTorch's CPU capability, lower case."""
    flags = {torch.backends.cpu.get_cpu_capability().lower()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def bf16_is_native(device: torch.device) -> bool:
    """Whether `device` computes bf16 dot products in hardware (else PyTorch emulates them, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(cpu_flags() & NATIVE_BF16_CPU_FLAGS)
    return True


def warn_if_bf16_is_emulated(training_args: TrainingArguments) -> None:
    if (training_args.bf16 or training_args.bf16_full_eval) and not bf16_is_native(training_args.device):
        logger.warning(
            f"--bf16 on {training_args.device.type}: this {training_args.device.type.upper()} has no native bf16 dot "
            "products (CPU: no avx512_bf16 / amx_bf16 flag; GPU: before Ampere), so bf16 is emulated and runs "
            "several times slower than float32. Leave out --bf16 here."
        )


def setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()  # the main process logs at INFO unless --log_level says
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    logging.getLogger("modeling_intr").setLevel(log_level)  # e.g. the converter's summary
    datasets.utils.logging.set_verbosity(log_level)
    datasets.utils.logging.disable_propagation()  # datasets has its own handler: no second copy through the root
    transformers.utils.logging.set_verbosity(log_level)


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(
        (ModelArguments, DataArguments, IntrTrainingArguments),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="[accelerate launch [--multi_gpu --num_processes N]] run_finetune.py --model_name_or_path START "
              "(or --config_name CONFIG) --dataset_name NAME [--dataset_path ROOT] --output_dir OUT --do_train "
              "--do_eval [options]",
    )


def parse_arguments(argv=None) -> tuple[ModelArguments, DataArguments, IntrTrainingArguments]:
    parser = build_parser()
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if (model_args.model_name_or_path is None) == (model_args.config_name is None):
        parser.error("Give exactly one of --model_name_or_path (a starting point) and --config_name (from scratch).")
    if not (training_args.do_train or training_args.do_eval):
        parser.error("Nothing to do: pass --do_train and/or --do_eval.")
    if model_args.lr_drop > 0 and training_args.lr_scheduler_type != "constant":
        parser.error(f"--lr_drop {model_args.lr_drop} is the reference's step schedule; to use --lr_scheduler_type "
                     f"{training_args.lr_scheduler_type.value} instead, pass --lr_drop 0.")
    return model_args, data_args, training_args


def main(argv=None, callbacks=None) -> dict:
    """
    Run `run_finetune.py` with `argv` (default: the command line) and extra `TrainerCallback`s (e.g. timers);
    returns the train / eval metrics. Expected failures raise one of `EXPECTED_ERRORS` with a one-line message.
    """
    model_args, data_args, training_args = parse_arguments(argv)
    setup_logging(training_args)
    if training_args.should_log:
        warn_if_bf16_is_emulated(training_args)
    resume_from = None
    if training_args.do_train:
        resume_from = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
        protected = [Path.cwd(), model_args.model_name_or_path, model_args.config_name, data_args.dataset_path]
        prepare_output_dir(training_args, resume_from is not None, [str(p) for p in protected if p is not None])
    if model_args.model_name_or_path is not None:  # before the data is read: fail fast
        check_starting_point(model_args.model_name_or_path)
    elif not Path(model_args.config_name).exists():
        raise FinetuneError(f"--config_name {model_args.config_name} does not exist (no such file or folder).")
    set_seed(training_args.seed)

    splits = [data_args.train_split] * training_args.do_train + [data_args.eval_split] * training_args.do_eval
    with training_args.main_process_first(desc="loading and checking the dataset"):
        data = load_image_splits(data_args.dataset_path, data_args.dataset_name, splits, data_args.strict_images)
    for split, skipped in data.skipped.items():
        if skipped and training_args.should_log:
            logger.warning(f"Skipped {len(skipped)} file(s) of split {split!r}: " + "; ".join(skipped))
    if len(data.classes) < 2:
        raise FinetuneError(f"Classification needs at least two classes; {data_args.dataset_name!r} has "
                            f"{len(data.classes)}: {data.classes}. Add a class folder per class.")
    logger.info(f"{len(data.classes)} classes; " + ", ".join(f"{s}: {len(d)} images" for s, d in data.splits.items()))

    model = load_model(model_args, data.classes, training_args.seed)
    image_processor = load_image_processor(model_args, data_args)
    train_dataset = eval_dataset = None
    if training_args.do_train:
        augmentation = TrainAugmentation(fixed_size=data_args.fixed_size, flip_prob=data_args.flip_prob)
        train_dataset = data.splits[data_args.train_split].with_transform(ImageTransform(image_processor, augmentation))
    if training_args.do_eval:
        eval_dataset = data.splits[data_args.eval_split].with_transform(ImageTransform(image_processor))

    trainer = IntrTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collate_images,
        processing_class=image_processor,
        compute_metrics=build_compute_metrics(),
        backbone_learning_rate=model_args.backbone_learning_rate,
        lr_drop=model_args.lr_drop,
        callbacks=callbacks,
    )
    all_metrics, eval_metrics = {}, None
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=resume_from)
        trainer.save_model()
        trainer.save_state()
        metrics = {**train_result.metrics, "train_num_images": len(train_dataset),
                   "train_num_skipped": len(data.skipped[data_args.train_split])}
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        all_metrics.update(metrics)
        if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):  # sharded weights differ per process
            checksum = weights_checksum(trainer.accelerator.unwrap_model(trainer.model))
            print(f"[process {training_args.process_index}/{training_args.world_size}] final weights sha256 "
                  f"{checksum}", flush=True)
    if training_args.do_eval:
        skipped = data.skipped[data_args.eval_split]
        eval_metrics = {**trainer.evaluate(metric_key_prefix="eval"), "eval_num_skipped": len(skipped)}
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", {**eval_metrics, "eval_skipped_files": skipped})
        all_metrics.update(eval_metrics)
    if training_args.do_train and trainer.is_world_process_zero():
        write_model_card(trainer, model_args, data_args, data, eval_metrics)
    if training_args.do_train and training_args.push_to_hub:
        trainer.push_to_hub(commit_message="run_finetune.py")
    return all_metrics


def cli(argv=None) -> int:
    """The command line: `main`, with every expected failure printed as one `error: ...` line (exit status 1)."""
    try:
        main(argv)
    except EXPECTED_ERRORS as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
