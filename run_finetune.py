#!/usr/bin/env python
"""Fine-tune and evaluate INTR with the Hugging Face `Trainer`, on one device or many through `accelerate`.

    accelerate launch [--multi_gpu --num_processes N] run_finetune.py \
        --model_name_or_path DIR_OR_REPO_OR_PTH --dataset_path ROOT --dataset_name NAME \
        --output_dir OUT --do_train --do_eval [any TrainingArguments flag]

Data: the reference layout `ROOT/NAME/{train,val[,test]}/<class>/<image>` (imagefolder; classes = sorted folder
names), or a Hub dataset `--dataset_name` without `--dataset_path`. Starting points: an INTR folder or Hub repo (e.g.
written by `convert_detr_checkpoint.py`), a DETR / INTR `.pth` (converted on the fly), or `--config_name CONFIG` to
train from scratch. The defaults are the reference's recipe: AdamW, lr 5e-5 (transformer, queries) and 1e-5
(backbone), weight decay 1e-6, lr x0.1 at epoch 80, gradient clipping 0.1, 140 epochs, batch 12 per device, seed 42,
and the reference's multi-scale augmentation (or `--fixed_size N` square batches).

`--do_eval` alone evaluates (the reference's `--eval`): acc@1 / acc@5 over the whole split, each image counted once
across processes, printed and written to `OUT/eval_results.json`. After training, `OUT` is a complete Hub repo
(weights, config with labels, processor, code bundle, model card with the eval metrics); `--push_to_hub` pushes it.
"""

import hashlib
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import evaluate
import torch
import transformers
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.modelcard import TrainingSummary

from modeling_intr import IntrConfig, IntrForImageClassification, IntrImageProcessor
from modeling_intr.data import ImageTransform, TrainAugmentation, collate_images, load_image_splits

logger = logging.getLogger(__name__)

TOPK_METRIC = Path(__file__).resolve().parent / "metrics" / "topk_accuracy"


@dataclass
class ModelArguments:
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

    def __init__(self, *args, backbone_learning_rate: float, lr_drop: int, starting_point: str | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.backbone_learning_rate = backbone_learning_rate
        self.lr_drop = lr_drop
        self.starting_point = starting_point

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            groups = parameter_groups(model, self.args.learning_rate, self.backbone_learning_rate,
                                      self.args.weight_decay)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_drop <= 0 or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        drop_every = self.lr_drop * self.steps_per_epoch()
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer if optimizer is None else optimizer, lambda step: 0.1 ** (step // drop_every)
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def create_model_card(self, finetuned_from: str | None = None, **kwargs) -> None:
        """The `Trainer` card (hyper-parameters, eval results), naming the starting point right when it is local."""
        if not self.is_world_process_zero():
            return
        local = self.starting_point is not None and Path(self.starting_point).exists()
        if finetuned_from is None and self.starting_point is not None and not local:
            finetuned_from = self.starting_point  # a Hub repo
        summary = TrainingSummary.from_trainer(self, finetuned_from=finetuned_from, **kwargs)
        summary.finetuned_from = finetuned_from  # not the config's `_name_or_path` ("" for a new model)
        card = summary.to_model_card()
        if local:
            card = card.replace("This model was trained from scratch on",
                                f"This model was fine-tuned from `{Path(self.starting_point).name}` on")
        Path(self.args.output_dir, "README.md").write_text(card, encoding="utf-8")

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch on each process (the dataloader's length over gradient accumulation)."""
        batches = len(self.train_dataset) / (self.args.train_batch_size * self.args.world_size)
        batches = math.floor(batches) if self.args.dataloader_drop_last else math.ceil(batches)
        return max(batches // self.args.gradient_accumulation_steps, 1)


def labels_of(config) -> list[str]:
    return [config.id2label[index] for index in range(config.num_labels)]


def needs_conversion(path: str) -> bool:
    """A checkpoint file (DETR / INTR `.pth`, an HF DETR `.bin` / `.safetensors`) or an HF DETR folder, not INTR."""
    if Path(path).is_file():
        return True
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "detr"


def load_model(model_args: ModelArguments, classes: list[str], seed: int = 42) -> IntrForImageClassification:
    """The starting point, with one class query per data class (see `ModelArguments`)."""
    id2label = dict(enumerate(classes))
    label2id = {label: index for index, label in id2label.items()}
    if model_args.config_name is not None:
        config = IntrConfig.from_pretrained(model_args.config_name, id2label=id2label, label2id=label2id)
        return IntrForImageClassification(config)
    path = model_args.model_name_or_path
    if needs_conversion(path):  # converted on the fly by the converter (convert_detr_checkpoint.py's function)
        from modeling_intr.convert import convert_to_model

        return convert_to_model(path, id2label=id2label, reinit_class_queries=model_args.reinit_class_queries,
                                seed=seed)
    model = IntrForImageClassification.from_pretrained(path)
    if labels_of(model.config) == classes:
        return model
    if not model_args.reinit_class_queries:
        raise ValueError(
            f"The model's classes differ from the data's (sorted class folder names).\n  model ({model.config.num_labels}):"
            f" {labels_of(model.config)}\n  data ({len(classes)}): {classes}\n"
            "Pass --reinit_class_queries to train new class queries for the data's classes."
        )
    config = IntrConfig.from_pretrained(path, id2label=id2label, label2id=label2id)
    model = IntrForImageClassification.from_pretrained(path, config=config, ignore_mismatched_sizes=True)
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


def setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)


def parse_arguments(argv=None) -> tuple[ModelArguments, DataArguments, IntrTrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, IntrTrainingArguments))
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
    returns the train / eval metrics.
    """
    model_args, data_args, training_args = parse_arguments(argv)
    setup_logging(training_args)
    set_seed(training_args.seed)

    splits = [data_args.train_split] * training_args.do_train + [data_args.eval_split] * training_args.do_eval
    with training_args.main_process_first(desc="loading and checking the dataset"):
        data = load_image_splits(data_args.dataset_path, data_args.dataset_name, splits, data_args.strict_images)
    for split, skipped in data.skipped.items():
        if skipped and training_args.should_log:
            logger.warning(f"Skipped {len(skipped)} file(s) of split {split!r}: " + "; ".join(skipped))
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
        starting_point=model_args.model_name_or_path,
        callbacks=callbacks,
    )
    all_metrics = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.save_state()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        all_metrics.update(train_result.metrics)
        if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):  # sharded weights differ per process
            checksum = weights_checksum(trainer.accelerator.unwrap_model(trainer.model))
            print(f"[process {training_args.process_index}/{training_args.world_size}] final weights sha256 "
                  f"{checksum}", flush=True)
    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        all_metrics.update(metrics)
    if training_args.do_train:
        card = {"model_name": Path(training_args.output_dir).name, "dataset": data_args.dataset_name,
                "tags": ["intr", "image-classification", "interpretability"]}
        if training_args.push_to_hub:
            trainer.push_to_hub(**card)
        else:
            trainer.create_model_card(**card)
    return all_metrics


if __name__ == "__main__":
    main()
