"""The steps of fine-tuning INTR with the `Trainer` (`run_finetune.py` is the recipe that calls them in order):

- the starting point: `check_start` (fail fast, before the data is read), `load_model` (an INTR folder or Hub repo,
  `load_intr_model`; a checkpoint converted on the fly by the converter, `convert_on_the_fly`; or a config from
  scratch, `model_from_config`; one class query per data class) and `load_image_processor`;
- the data: `load_data` (the image splits, skipped files logged, at least two classes);
- the optimizer: `parameter_groups` (the reference's backbone learning rate) and `steps_per_epoch`;
- the hardware: `warn_if_bf16_is_emulated`;
- the results: `train_results` / `eval_results` (what `train_results.json` / `eval_results.json` record, skipped files
  included), `weights_checksum`, and the model card (`recipe`, `write_model_card`).

The output folder and resuming from its checkpoints are `training_output`'s. Every failure a user can cause and fix
raises `FinetuneError` (or the converter's `CheckpointError`, the data's `DataError`) with a one-line message.
"""

import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from transformers import Trainer, TrainingArguments

from .checkpoint_io import CheckpointError, load_checkpoint_file
from .checkpoints import LabelsError, convert_with_summary
from .configuration_intr import IntrConfig
from .data import ImageSplits, TrainAugmentation, load_image_splits
from .hub_folder import write_text_atomically
from .image_processing_intr import IntrImageProcessor
from .model_card import intr_model_card
from .modeling_intr import IntrForImageClassification

logger = logging.getLogger(__name__)

WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
NATIVE_BF16_CPU_FLAGS = frozenset(("avx512_bf16", "amx_bf16", "bf16"))  # x86 AVX-512 / AMX, ARMv8.6 (`Features`)


class FinetuneError(ValueError):
    """An input `run_finetune.py` cannot work with: the message names the problem and the fix."""


def first_line(error: BaseException) -> str:
    """An exception's message in one line (libraries' multi-line texts reduced to their first non-empty line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


# ----------------------------------------------------------------------------------------------- starting point


def labels_of(config) -> list[str]:
    return [config.id2label[index] for index in range(config.num_labels)]


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


def check_start(model_name_or_path: str | None, config_name: str | None = None) -> None:
    """Refuse, naming the problem, a starting point that is missing or a local folder that cannot be a model."""
    if model_name_or_path is None:
        if not Path(config_name).exists():
            raise FinetuneError(f"--config_name {config_name} does not exist (no such file or folder).")
        return
    local = Path(model_name_or_path).expanduser()
    if not local.exists():
        if not could_be_hub_repo(model_name_or_path):
            raise FinetuneError(f"--model_name_or_path {model_name_or_path} does not exist (no such file or folder).")
        return  # a Hub repo id: from_pretrained reports a failed download
    if local.is_file():
        if local.stat().st_size == 0:
            raise FinetuneError(f"Checkpoint {model_name_or_path} is empty (0 bytes): the download or copy did not "
                                "finish.")
        return  # the converter's reader names a truncated, foreign or unsafe file
    if not (local / "config.json").is_file():
        raise FinetuneError(f"Folder {local} has no config.json: not a model folder (expected an INTR folder from "
                            "run_finetune.py or convert_detr_checkpoint.py, a Hugging Face DETR folder, or a .pth).")
    weights = [local / name for name in WEIGHTS_FILES if (local / name).is_file()]
    if not weights:
        raise FinetuneError(f"Folder {local} has no weights (none of {', '.join(WEIGHTS_FILES)}): copy them into it.")
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


def convert_on_the_fly(path: str, classes: list[str], reinit_class_queries: bool, seed: int):
    """A DETR / INTR checkpoint through the converter (`convert_detr_checkpoint.py`'s pipeline); logs its summary."""
    try:
        conversion = convert_with_summary(path, id2label=classes, reinit_class_queries=reinit_class_queries, seed=seed)
    except LabelsError as error:  # the checkpoint's classes and the data's disagree
        raise FinetuneError(f"{' '.join(str(error).split())} (or pass --reinit_class_queries to train new class "
                            "queries for the data's classes)") from None
    logger.info("Converted the starting point on the fly:\n%s", conversion.summary)
    return conversion.model


def model_from_config(config_name: str, classes: list[str]) -> IntrForImageClassification:
    """A new model (training from scratch) from an `IntrConfig` file or folder, with `classes` as its labels."""
    id2label = dict(enumerate(classes))
    try:
        config = IntrConfig.from_pretrained(config_name, id2label=id2label,
                                            label2id={label: index for index, label in id2label.items()})
    except (OSError, ValueError) as error:
        raise FinetuneError(f"--config_name {config_name}: {first_line(error)}") from None
    return IntrForImageClassification(config)


def weights_problem(folder: Path) -> str | None:
    """
    What the converter's safe reader (`checkpoint_io.load_checkpoint_file`) finds wrong with a local folder's weights
    file (unsafe pickle, truncated, foreign), in its words rather than PyTorch's advice; None if it reads it.
    """
    weights = [folder / name for name in WEIGHTS_FILES if (folder / name).is_file() and not name.endswith(".json")]
    if not weights:
        return None
    try:
        load_checkpoint_file(weights[0])
    except CheckpointError as error:
        return " ".join(str(error).split())
    return None


def load_intr_model(path: str, classes: list[str], reinit_class_queries: bool) -> IntrForImageClassification:
    """An INTR folder or Hub repo; other classes than `classes` are an error unless `reinit_class_queries`."""
    config = load_config(path)
    new_classes = labels_of(config) != classes
    if new_classes and not reinit_class_queries:
        raise FinetuneError(
            f"The model's classes differ from the data's (sorted class folder names): model ({config.num_labels}): "
            f"{labels_of(config)}; data ({len(classes)}): {classes}. Pass --reinit_class_queries to train new class "
            "queries for the data's classes."
        )
    if new_classes:
        config.id2label = dict(enumerate(classes))
        config.label2id = {label: index for index, label in config.id2label.items()}
    try:
        model = IntrForImageClassification.from_pretrained(path, config=config, ignore_mismatched_sizes=new_classes)
    except MemoryError:
        raise
    except Exception as error:  # truncated or foreign weights, an unsafe pickle, a failed download: one line
        reason = weights_problem(Path(path)) or first_line(error)
        raise FinetuneError(f"Cannot load the weights of {path}: {reason}") from None
    if new_classes:
        torch.nn.init.normal_(model.model.class_queries.weight)  # the reference initialisation of the queries
    return model


def load_model(classes: list[str], *, model_name_or_path: str | None = None, config_name: str | None = None,
               reinit_class_queries: bool = False, seed: int = 42) -> IntrForImageClassification:
    """
    The starting point `model_name_or_path` (an INTR folder or repo, or a checkpoint converted on the fly), or a new
    model from `config_name`, with one class query per class of `classes`, index 0 first. A model whose classes
    differ is an error unless `reinit_class_queries`, which draws new N(0, 1) queries (the reference
    initialisation); the weights are read once.
    """
    if model_name_or_path is None:
        return model_from_config(config_name, classes)
    check_start(model_name_or_path)
    if needs_conversion(model_name_or_path):
        return convert_on_the_fly(model_name_or_path, classes, reinit_class_queries, seed)
    return load_intr_model(model_name_or_path, classes, reinit_class_queries)


def load_image_processor(model_name_or_path: str | None, fixed_size: int | None) -> IntrImageProcessor:
    """The starting point's processor when it has one (else the reference default), with `fixed_size` applied."""
    overrides = {"size": {"height": fixed_size, "width": fixed_size}} if fixed_size else {}
    path = model_name_or_path
    if path is not None and not needs_conversion(path):
        if not Path(path).is_dir() or (Path(path) / "preprocessor_config.json").is_file():
            return IntrImageProcessor.from_pretrained(path, **overrides)
    return IntrImageProcessor(**overrides)


# ----------------------------------------------------------------------------------------------- data, optimizer


def load_data(training_args: TrainingArguments, dataset_path: str | None, dataset_name: str, splits: list[str],
              strict_images: bool = False) -> ImageSplits:
    """`data.load_image_splits` (the main process first), skipped files logged, and at least two classes."""
    with training_args.main_process_first(desc="loading and checking the dataset"):
        data = load_image_splits(dataset_path, dataset_name, splits, strict_images)
    for split, skipped in data.skipped.items():
        if skipped and training_args.should_log:
            logger.warning(f"Skipped {len(skipped)} file(s) of split {split!r}: " + "; ".join(skipped))
    if len(data.classes) < 2:
        raise FinetuneError(f"Classification needs at least two classes; {dataset_name!r} has "
                            f"{len(data.classes)}: {data.classes}. Add a class folder per class.")
    logger.info(f"{len(data.classes)} classes; " + ", ".join(f"{s}: {n} images" for s, n in data.kept.items()))
    return data


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


def steps_per_epoch(args: TrainingArguments, num_examples: int) -> int:
    """Optimizer steps per epoch on each process (the dataloader's length over gradient accumulation)."""
    batches = num_examples / (args.train_batch_size * args.world_size)
    batches = math.floor(batches) if args.dataloader_drop_last else math.ceil(batches)
    return max(batches // args.gradient_accumulation_steps, 1)


# ----------------------------------------------------------------------------------------------- hardware


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
        kind = training_args.device.type
        logger.warning(
            f"--bf16 on {kind}: this {kind.upper()} has no native bf16 dot products (CPU: no avx512_bf16 / amx_bf16 "
            "flag; GPU: before Ampere), so bf16 is emulated and runs several times slower than float32. Leave out "
            "--bf16 here."
        )


# ----------------------------------------------------------------------------------------------- results


def train_results(trainer: Trainer, metrics: dict, data: ImageSplits, split: str) -> dict:
    """Log and save (`train_results.json`) the training metrics with the images trained on and the files skipped."""
    metrics = {**metrics, "train_num_images": data.kept[split], "train_num_skipped": len(data.skipped[split])}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", {**metrics, "train_skipped_files": data.skipped[split]})
    return metrics


def eval_results(trainer: Trainer, data: ImageSplits, split: str) -> dict:
    """
    Evaluate, then log and save (`eval_results.json`) the metrics with `eval_num_images` (counted by the evaluation,
    each image once across processes), `eval_num_skipped` and `eval_skipped_files` (data.py's `"file: reason"` lines).
    """
    metrics = {**trainer.evaluate(metric_key_prefix="eval"), "eval_num_skipped": len(data.skipped[split])}
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", {**metrics, "eval_skipped_files": data.skipped[split]})
    return metrics


def weights_checksum(model: torch.nn.Module) -> str:
    """SHA-256 of every state-dict tensor (names sorted): equal on all processes after data-parallel training."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- model card


def augmentation_text(augmentation: TrainAugmentation) -> str:
    if augmentation.fixed_size:
        resize = f"resize to {augmentation.fixed_size}x{augmentation.fixed_size}"
    else:
        resize = (f"the reference multi-scale resize / crop (shorter side {min(augmentation.scales)}-"
                  f"{max(augmentation.scales)}, longer <= {augmentation.max_size})")
    return f"horizontal flip p={augmentation.flip_prob:g}, {resize}"


def recipe(trainer: Trainer, *, backbone_learning_rate: float, lr_drop: int, augmentation: TrainAugmentation,
           training_data: str) -> list[tuple[str, str]]:
    """The training recipe this run actually used, as model-card table rows (`lr_drop` in epochs, 0: none)."""
    args = trainer.args
    if lr_drop > 0:
        drop_steps = lr_drop * steps_per_epoch(args, len(trainer.train_dataset))
        schedule = f"StepLR: learning rates x0.1 every {lr_drop} epochs ({drop_steps} optimizer steps)"
    else:
        schedule = f"{args.lr_scheduler_type.value}" + (f", warmup {args.warmup_steps}" if args.warmup_steps else "")
    precision = "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "float32"
    frozen = trainer.model.config.frozen_backbone_stages
    batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    return [
        ("Script", "`run_finetune.py` (transformers `Trainer`)"),
        ("Training data", training_data),
        ("Optimizer", f"AdamW, learning rate {args.learning_rate:g} (transformer, class queries, presence head) and "
                      f"{backbone_learning_rate:g} (backbone), weight decay {args.weight_decay:g}"),
        ("Schedule", schedule),
        ("Length", f"{trainer.state.epoch:g} epochs ({trainer.state.global_step} optimizer steps)"),
        ("Batch", f"{args.per_device_train_batch_size} per device x {args.world_size} processes x "
                  f"{args.gradient_accumulation_steps} accumulation = {batch}"),
        ("Gradient clipping", f"{args.max_grad_norm:g}"),
        ("Augmentation", augmentation_text(augmentation)),
        ("Frozen backbone stages", ", ".join(frozen) if frozen else "none"),
        ("Precision", precision),
        ("Seed", str(args.seed)),
    ]


def write_model_card(trainer: Trainer, *, origin: str, details: list[tuple[str, str]], eval_metrics: dict | None,
                     base_model: str | None = None, datasets: Sequence[str] = ()) -> None:
    """The output folder's README.md: the INTR card (`model_card.intr_model_card`) with this run's results."""
    eval_table = None
    if eval_metrics is not None:
        eval_table = {"acc@1": eval_metrics["eval_acc@1"], "acc@5": eval_metrics["eval_acc@5"],
                      "loss": eval_metrics["eval_loss"], "images evaluated": eval_metrics["eval_num_images"],
                      "unreadable files skipped": eval_metrics["eval_num_skipped"]}
    args = trainer.args
    card = intr_model_card(trainer.model.config, origin=origin, details=details, eval_results=eval_table,
                           base_model=base_model, datasets=datasets,
                           repo_id=args.hub_model_id if args.push_to_hub else None)
    write_text_atomically(Path(args.output_dir) / "README.md", str(card))
