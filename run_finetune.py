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
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.training_args import OptimizerNames

from modeling_intr.checkpoints import CheckpointError
from modeling_intr.extras import optional_dependencies

TRAINING_EXTRAS = ("datasets", "evaluate", "accelerate")
with optional_dependencies("run_finetune.py", "'intr-transformers[train]'", TRAINING_EXTRAS,
                           command_line=__name__ == "__main__"):
    import accelerate  # noqa: F401  (the Trainer's engine)
    import datasets
    import evaluate

    from modeling_intr.data import DataError, ImageSplits, ImageTransform, TrainAugmentation, collate_images
    from modeling_intr.training import (
        FinetuneError,
        check_start,
        eval_results,
        load_data,
        load_image_processor,
        load_model,
        needs_conversion,
        parameter_groups,
        recipe,
        steps_per_epoch,
        train_results,
        warn_if_bf16_is_emulated,
        weights_checksum,
        write_model_card,
    )
    from modeling_intr.training_output import prepare_output_dir, resolve_resume_checkpoint

logger = logging.getLogger(__name__)

TOPK_METRIC = Path(__file__).resolve().parent / "metrics" / "topk_accuracy"
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
        metadata={"help": "Re-initialise the class queries (and labels) when the model's classes differ from the "
                          "data's."},
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
    optim: OptimizerNames | str = field(
        default="adamw_torch_fused",
        metadata={"help": "Optimizer: the recipe's AdamW through PyTorch's fused kernel (CPU and GPU). transformers "
                          "defaults to it with torch >= 2.8 only; before, to the for-loop AdamW, 3x slower on CPU."},
    )
    num_train_epochs: float = field(default=140.0, metadata={"help": "Number of training epochs."})
    per_device_train_batch_size: int = field(default=12, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=12, metadata={"help": "Evaluation batch size per device."})
    seed: int = field(default=42, metadata={"help": "Random seed (model init, data order, augmentation)."})
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Scheduler when --lr_drop 0 (the step drop applies on top of constant)."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the image column for the transform."})
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={"help": "Log a NaN / Inf training loss as the recent mean instead. Off by default: the filter reads "
                          "every step's loss on the host, which on a GPU waits for the step's backward to finish."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Training into a non-empty --output_dir replaces its contents (a previous run's weights, "
                          "results and checkpoints); without it such a folder is refused unless resuming."},
    )

    def __post_init__(self):
        # Batches go to the GPU from pinned memory without the host waiting for the copy (accelerate's non_blocking),
        # so with the collator's mask-free fixed-size batches and no NaN filter a training step never waits for the
        # device. An explicit --accelerator_config replaces this default; without pinned memory (turned off by the
        # user or by --use_cpu) there is nothing to copy without waiting.
        default_accelerator_config = self.accelerator_config is None
        super().__post_init__()
        if default_accelerator_config and self.dataloader_pin_memory:
            self.accelerator_config.non_blocking = True


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
        step_size = self.lr_drop * steps_per_epoch(self.args, len(self.train_dataset))
        optimizer = self.optimizer if optimizer is None else optimizer
        self.lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=0.1)
        return self.lr_scheduler

    def create_model_card(self, *args, **kwargs) -> None:
        """Keep the INTR card `write_model_card` wrote (`push_to_hub` would replace it with the generic one)."""

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


def prepare_output(model_args: ModelArguments, data_args: DataArguments, training_args: IntrTrainingArguments):
    """The checkpoint to resume from (None: a fresh run), and the output folder ready for training into it."""
    resume_from = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    protected = [Path.cwd(), model_args.model_name_or_path, model_args.config_name, data_args.dataset_path]
    prepare_output_dir(training_args, resume_from is not None, [str(p) for p in protected if p is not None])
    return resume_from


def load_starting_point(model_args: ModelArguments, data_args: DataArguments, data: ImageSplits, seed: int):
    """The model (one class query per data class) and its image processor."""
    model = load_model(data.classes, model_name_or_path=model_args.model_name_or_path,
                       config_name=model_args.config_name, reinit_class_queries=model_args.reinit_class_queries,
                       seed=seed)
    return model, load_image_processor(model_args.model_name_or_path, data_args.fixed_size)


def train_augmentation(data_args: DataArguments) -> TrainAugmentation:
    return TrainAugmentation(fixed_size=data_args.fixed_size, flip_prob=data_args.flip_prob)


def build_trainer(model, image_processor, data: ImageSplits, model_args: ModelArguments, data_args: DataArguments,
                  training_args: IntrTrainingArguments, callbacks=None) -> IntrTrainer:
    """The Trainer over the data's splits: augmented training images, plain evaluation images, top-k metrics."""
    train_dataset = eval_dataset = None
    if training_args.do_train:
        transform = ImageTransform(image_processor, train_augmentation(data_args))
        train_dataset = data.splits[data_args.train_split].with_transform(transform)
    if training_args.do_eval:
        eval_dataset = data.splits[data_args.eval_split].with_transform(ImageTransform(image_processor))
    return IntrTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                       data_collator=collate_images, processing_class=image_processor, callbacks=callbacks,
                       compute_metrics=build_compute_metrics(),
                       backbone_learning_rate=model_args.backbone_learning_rate, lr_drop=model_args.lr_drop)


def build_compute_metrics():
    """acc@1 / acc@5 (the `metrics/topk_accuracy` module, loaded by path) and the number of images evaluated."""
    metric = evaluate.load(str(TOPK_METRIC), keep_in_memory=True)

    def compute_metrics(eval_prediction) -> dict:
        logits, labels = eval_prediction.predictions, eval_prediction.label_ids
        results = metric.compute(predictions=logits, references=labels, k=(1, 5))
        return {**results, "num_images": len(labels)}

    return compute_metrics


def print_weights_checksum(trainer: IntrTrainer) -> None:
    """Each process prints the SHA-256 of its weights (equal after data-parallel training; sharded ones differ)."""
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        checksum = weights_checksum(trainer.accelerator.unwrap_model(trainer.model))
        print(f"[process {trainer.args.process_index}/{trainer.args.world_size}] final weights sha256 {checksum}",
              flush=True)


def write_card(trainer: IntrTrainer, model_args: ModelArguments, data_args: DataArguments, data: ImageSplits,
               eval_metrics: dict | None) -> None:
    """The output folder's INTR model card: where the weights come from, the recipe used, the eval results."""
    start, dataset = model_args.model_name_or_path, data_args.dataset_name
    if start is None:
        origin = (f"Trained from scratch (configuration `{Path(model_args.config_name).name}`) with "
                  f"`run_finetune.py` on `{dataset}`.")
    elif needs_conversion(start):
        origin = (f"Fine-tuned with `run_finetune.py` on `{dataset}`, starting from the checkpoint "
                  f"`{Path(start).name}` converted on the fly by the INTR converter.")
    else:
        origin = f"Fine-tuned with `run_finetune.py` on `{dataset}`, starting from `{start}`."
    split, skipped = data_args.train_split, len(data.skipped[data_args.train_split])
    training_data = (f"`{dataset}`, split `{split}`: {data.kept[split]} images"
                     + (f" ({skipped} unreadable files skipped)" if skipped else ""))
    details = recipe(trainer, backbone_learning_rate=model_args.backbone_learning_rate, lr_drop=model_args.lr_drop,
                     augmentation=train_augmentation(data_args),
                     training_data=training_data)
    if eval_metrics is not None:
        details.append(("Evaluation data", f"`{dataset}`, split `{data_args.eval_split}`"))
    write_model_card(trainer, origin=origin, details=details, eval_metrics=eval_metrics,
                     base_model=start if start is not None and not Path(start).exists() else None,
                     datasets=[dataset] if data_args.dataset_path is None else [])


def main(argv=None, callbacks=None) -> dict:
    """
    Run `run_finetune.py` with `argv` (default: the command line) and extra `TrainerCallback`s (e.g. timers);
    returns the train / eval metrics. Expected failures raise one of `EXPECTED_ERRORS` with a one-line message.
    """
    model_args, data_args, training_args = parse_arguments(argv)
    setup_logging(training_args)
    if training_args.should_log:
        warn_if_bf16_is_emulated(training_args)
    resume_from = prepare_output(model_args, data_args, training_args) if training_args.do_train else None
    check_start(model_args.model_name_or_path, model_args.config_name)  # before the data is read: fail fast
    set_seed(training_args.seed)

    splits = [data_args.train_split] * training_args.do_train + [data_args.eval_split] * training_args.do_eval
    data = load_data(training_args, data_args.dataset_path, data_args.dataset_name, splits, data_args.strict_images)
    model, image_processor = load_starting_point(model_args, data_args, data, training_args.seed)
    trainer = build_trainer(model, image_processor, data, model_args, data_args, training_args, callbacks)

    metrics, eval_metrics = {}, None
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=resume_from)
        trainer.save_model()
        trainer.save_state()
        metrics.update(train_results(trainer, train_result.metrics, data, data_args.train_split))
        print_weights_checksum(trainer)
    if training_args.do_eval:
        eval_metrics = eval_results(trainer, data, data_args.eval_split)
        metrics.update(eval_metrics)
    if training_args.do_train and trainer.is_world_process_zero():
        write_card(trainer, model_args, data_args, data, eval_metrics)
    if training_args.do_train and training_args.push_to_hub:
        trainer.push_to_hub(commit_message="run_finetune.py")
    return metrics


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
