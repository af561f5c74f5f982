"""Tests of `run_finetune.py` and `modeling_intr/data.py`: training and evaluation end to end on the digits image
folder, 2-process data-parallel training through `accelerate launch`, resume equivalence, the augmentation, the
optimizer groups and schedule, bad data. CPU only, a few minutes in all.
"""

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import ResNetConfig

from benchmarks.bench_forward import dispatched_ops
from conftest import FIXTURES, REPO, clean_subprocess_env, tiny_config

sys.path.insert(0, str(REPO / "examples"))

import run_finetune  # noqa: E402
from make_digits_dataset import make_digits_dataset  # noqa: E402
from modeling_intr import IntrConfig, IntrForImageClassification, IntrImageProcessor, training  # noqa: E402
from modeling_intr.data import (  # noqa: E402
    REFERENCE_SCALES,
    DataError,
    TrainAugmentation,
    check_image_folder,
    ImageTransform,
    collate_images,
    load_image_splits,
    pad_images,
)
from modeling_intr.training_output import checkpoint_problems  # noqa: E402

# Far above chance: 10 balanced classes (chance 0.10). Reaching 0.5 on 200 held-out images by luck has probability
# P(Binomial(200, 0.1) >= 100) < 1e-40, so it can only come from learning to find and recognise the digit (the tiny
# model below reaches about 0.7 in 450 steps; 0.5 leaves room for platform differences).
ACC_THRESHOLD = 0.5


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Train on one intra-op thread: on a small machine shared with other jobs, two spinning OpenMP threads can slow
    these tiny models down by an order of magnitude (the subprocess tests set OMP_NUM_THREADS=1 for the same reason)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_digits_config(path: Path, dropout: float = 0.0) -> Path:
    """A tiny from-scratch INTR for 64x64 canvases (stride 16: 4x4 feature map), written as a config JSON."""
    config = IntrConfig(
        backbone_config=ResNetConfig(layer_type="basic", depths=[1, 1, 1], hidden_sizes=[16, 32, 64],
                                     embedding_size=16, out_features=["stage3"]),
        frozen_backbone_stages=[], d_model=32, num_attention_heads=4, encoder_layers=1, decoder_layers=1,
        ffn_dim=64, dropout=dropout, attention_dropout=dropout, num_labels=10,
    )
    config.to_json_file(path)
    return path


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    """64x64 digit canvases, 100 per class (80 train / 20 val) plus one more val image (201: an odd count that two
    processes cannot split evenly), and one corrupt file that must be skipped."""
    root = tmp_path_factory.mktemp("data")
    make_digits_dataset(root, canvas_size=64, min_digit_size=32, max_digit_size=56, max_per_class=100, seed=0)
    val = root / "digits" / "val"
    first = json.loads((val / "metadata.jsonl").read_text().splitlines()[0])
    (val / "0" / "extra.png").write_bytes((val / first["file_name"]).read_bytes())
    with open(val / "metadata.jsonl", "a") as file:
        file.write(json.dumps({**first, "file_name": "0/extra.png"}) + "\n")
    (root / "digits" / "train" / "3" / "corrupt.png").write_bytes(b"not a png")
    (val / "5" / "broken.png").write_bytes(b"not a png either")  # listed in the metadata, unreadable
    with open(val / "metadata.jsonl", "a") as file:
        file.write(json.dumps({**first, "file_name": "5/broken.png"}) + "\n")
    return root


@pytest.fixture(scope="module")
def small_digits_root(tmp_path_factory):
    """32x32 canvases, 4 training and 1 validation image per class (40 / 10): for runs that test plumbing."""
    root = tmp_path_factory.mktemp("small")
    make_digits_dataset(root, canvas_size=32, min_digit_size=16, max_digit_size=28, max_per_class=5, seed=1)
    return root


def common_args(root: Path, config: Path, output_dir: Path, size: int = 64) -> list[str]:
    return ["--config_name", str(config), "--dataset_path", str(root), "--dataset_name", "digits",
            "--output_dir", str(output_dir), "--fixed_size", str(size), "--flip_prob", "0",
            "--learning_rate", "5e-4", "--backbone_learning_rate", "5e-4", "--per_device_train_batch_size", "16",
            "--per_device_eval_batch_size", "32", "--save_strategy", "no", "--report_to", "none",
            "--disable_tqdm", "true", "--dataloader_pin_memory", "false"]


@pytest.fixture(scope="module")
def trained(digits_root, tmp_path_factory):
    """Train the tiny model in process; returns (output folder, metrics)."""
    work = tmp_path_factory.mktemp("train")
    config = tiny_digits_config(work / "config.json")
    output_dir = work / "out"
    metrics = run_finetune.main(common_args(digits_root, config, output_dir) + [
        "--do_train", "--do_eval", "--num_train_epochs", "9", "--lr_drop", "7"])
    return output_dir, metrics


def test_training_reaches_far_above_chance(trained, digits_root):
    output_dir, metrics = trained
    assert metrics["eval_num_images"] == 201
    assert metrics["eval_acc@1"] >= ACC_THRESHOLD, metrics
    assert metrics["eval_acc@5"] >= metrics["eval_acc@1"]
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "modeling_intr.py",
                 "configuration_intr.py", "image_processing_intr.py", "README.md", "eval_results.json"):
        assert (output_dir / name).is_file(), name
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {str(i): str(i) for i in range(10)}
    assert "auto_map" in config
    evaluation = json.loads((output_dir / "eval_results.json").read_text())
    assert evaluation["eval_num_images"] == 201 and evaluation["eval_num_skipped"] == 1
    # the skipped files are recorded as data.py reports them, one "file: reason" line each
    data = load_image_splits(str(digits_root), "digits", ["train", "validation"])
    assert evaluation["eval_skipped_files"] == data.skipped["validation"]
    [skipped] = evaluation["eval_skipped_files"]
    assert skipped == "val/5/broken.png: the file is not an image file PIL can read."  # relative to the dataset root
    training_results = json.loads((output_dir / "train_results.json").read_text())
    assert training_results["train_num_images"] == 800 == data.kept["train"]
    assert training_results["train_num_skipped"] == 1
    assert training_results["train_skipped_files"] == data.skipped["train"]


def test_output_folder_has_an_intr_model_card_with_the_recipe_used(trained):
    output_dir, metrics = trained
    card = (output_dir / "README.md").read_text()
    assert card.startswith("---\n") and "Trained from scratch" in card
    assert "trust_remote_code=True" in card and "More information needed" not in card
    assert "StepLR: learning rates x0.1 every 7 epochs" in card and "constant" not in card
    assert re.search(r"(?is)classes.*\b0\b.*\b9\b", card)
    assert f"{metrics['eval_acc@1']:.4f}" in card and re.search(r"images evaluated\s*\|\s*201\b", card)
    assert "AdamW, learning rate 0.0005" in card and "9 epochs" in card


def test_eval_only_reproduces_the_reported_metrics(trained, digits_root, tmp_path):
    output_dir, metrics = trained
    evaluated = run_finetune.main(["--model_name_or_path", str(output_dir), "--dataset_path", str(digits_root),
                                   "--dataset_name", "digits", "--output_dir", str(tmp_path), "--do_eval",
                                   "--per_device_eval_batch_size", "7", "--report_to", "none",
                                   "--dataloader_pin_memory", "false"])
    for key in ("eval_acc@1", "eval_acc@5", "eval_num_images"):
        assert evaluated[key] == metrics[key], key
    assert json.loads((tmp_path / "eval_results.json").read_text())["eval_acc@1"] == metrics["eval_acc@1"]


def test_output_folder_loads_through_pipeline_in_a_clean_process(trained, digits_root, tmp_path):
    output_dir, _ = trained
    image = next((digits_root / "digits" / "val" / "7").glob("*.png"))
    code = ("from transformers import pipeline; import sys, json; "
            "classifier = pipeline('image-classification', model=sys.argv[1], trust_remote_code=True); "
            "print(json.dumps(classifier(sys.argv[2], top_k=3)))")
    result = subprocess.run([sys.executable, "-c", code, str(output_dir), str(image)], cwd=tmp_path,
                            env={**clean_subprocess_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(predictions) == 3 and all(p["label"] in [str(i) for i in range(10)] for p in predictions)


def test_two_process_data_parallel_training(digits_root, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 ... --use_cpu`: real gloo DDP, identical weights on both
    processes, each validation image counted once, outputs written once."""
    config = tiny_digits_config(tmp_path / "config.json", dropout=0.1)
    output_dir = tmp_path / "out"
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "run_finetune.py"),
               *common_args(digits_root, config, output_dir), "--do_train", "--do_eval", "--max_steps", "6",
               "--per_device_eval_batch_size", "8", "--use_cpu", "--logging_steps", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    checksums = dict(re.findall(r"\[process (\d)/2\] final weights sha256 (\w+)", output))
    assert set(checksums) == {"0", "1"}, output[-3000:]
    assert checksums["0"] == checksums["1"]
    saved = IntrForImageClassification.from_pretrained(output_dir)
    assert training.weights_checksum(saved) == checksums["0"]
    assert "Total train batch size (w. parallel, distributed & accumulation) = 32" in output  # 2 x 16
    assert json.loads((output_dir / "eval_results.json").read_text())["eval_num_images"] == 201
    assert output.count("***** train metrics *****") == 1
    assert output.count("Skipped 1 file(s) of split 'train'") == 1
    assert not list(output_dir.glob("checkpoint-*"))


def true_loss(model_dir: Path, root: Path, split: str, size: int) -> float:
    """The mean cross-entropy of the saved model over every image of `split`, computed here without the Trainer."""
    model = IntrForImageClassification.from_pretrained(model_dir).eval()
    dataset = load_image_splits(str(root), "digits", [split]).splits[split]
    transform = ImageTransform(IntrImageProcessor(size={"height": size, "width": size}))
    batch = collate_images([dataset.with_transform(transform)[index] for index in range(len(dataset))])
    with torch.no_grad():
        return model(**batch).loss.item()


def test_two_processes_log_the_same_loss_as_one(small_digits_root, tmp_path):
    """Same data and weights on 1 and 2 processes (batch 20 = 2 x 10, learning rate 0 so the weights stay those
    saved): the logged train loss and eval_loss are the same, and equal the saved model's true loss. The Trainer
    passes `num_items_in_batch` (counted over all processes) to a forward that accepts it and multiplies the loss by
    the process count, so a model that ignores it logs the loss doubled on two processes."""
    config = tiny_digits_config(tmp_path / "config.json")

    def arguments(output_dir: Path, batch_size: int) -> list[str]:
        return common_args(small_digits_root, config, output_dir, size=32) + [
            "--do_train", "--do_eval", "--num_train_epochs", "1", "--learning_rate", "0", "--backbone_learning_rate",
            "0", "--lr_drop", "0", "--per_device_train_batch_size", str(batch_size), "--per_device_eval_batch_size",
            "5", "--logging_steps", "1"]

    one = run_finetune.main(arguments(tmp_path / "one", 20))
    accelerate = Path(sys.executable).parent / "accelerate"
    result = subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", str(REPO / "run_finetune.py"), *arguments(tmp_path / "two", 10), "--use_cpu"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    two = json.loads((tmp_path / "two" / "all_results.json").read_text())
    expected = {"train_loss": true_loss(tmp_path / "one", small_digits_root, "train", 32),
                "eval_loss": true_loss(tmp_path / "one", small_digits_root, "validation", 32)}
    for key, value in expected.items():
        assert one[key] == pytest.approx(value, rel=1e-4), (key, "1 process")
        assert two[key] == pytest.approx(value, rel=1e-4), (key, "2 processes")


def test_resume_reaches_the_same_weights_and_skips_an_incomplete_checkpoint(digits_root, tmp_path, caplog):
    """Interrupt after 4 of 8 steps (checkpoint-4), resume in a fresh run: the same final weights. Dropout, flips
    and a learning-rate drop at step 4 make every piece of state (RNGs, optimizer, scheduler) matter. A run killed
    while writing checkpoint-8 leaves it with 3 files: `--resume_from_checkpoint True` picks checkpoint-4 and says
    why; naming checkpoint-8 is an error that names checkpoint-4."""
    config = tiny_digits_config(tmp_path / "config.json", dropout=0.1)
    full, killed = tmp_path / "full", tmp_path / "killed"

    def arguments(output_dir):
        return common_args(digits_root, config, output_dir) + [
            "--do_train", "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--flip_prob", "0.5",
            "--per_device_train_batch_size", "200", "--lr_drop", "1"]  # 4 steps per epoch: drop after step 4

    run_finetune.main(arguments(full))
    killed.mkdir()
    shutil.copytree(full / "checkpoint-4", killed / "checkpoint-4")
    (killed / "checkpoint-8").mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):  # the kill came after these
        shutil.copy(full / "checkpoint-8" / name, killed / "checkpoint-8" / name)
    weights = killed / "checkpoint-8" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert checkpoint_problems(killed / "checkpoint-4") == []
    problems = checkpoint_problems(killed / "checkpoint-8")
    assert any("no optimizer state" in p for p in problems)
    assert any("model.safetensors is unreadable" in p for p in problems)

    with pytest.raises(training.FinetuneError, match=r"checkpoint-8 is incomplete .*killed/checkpoint-4"):
        run_finetune.main(arguments(killed) + ["--resume_from_checkpoint", str(killed / "checkpoint-8")])
    with caplog.at_level("INFO", logger="modeling_intr.training_output"):
        run_finetune.main(arguments(killed) + ["--resume_from_checkpoint", "True"])
    assert re.search(r"Not resuming from \S*killed/checkpoint-8: incomplete \(.*no optimizer state", caplog.text)
    assert re.search(r"Resuming from \S*killed/checkpoint-4 \(step 4\)", caplog.text)
    reference, continued = load_file(full / "model.safetensors"), load_file(killed / "model.safetensors")
    start = load_file(full / "checkpoint-4" / "model.safetensors")
    assert any(not torch.equal(start[name], reference[name]) for name in reference)
    for name, tensor in reference.items():
        torch.testing.assert_close(continued[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_reference_defaults_and_parameter_groups(tmp_path):
    model_args, data_args, training_args = run_finetune.parse_arguments(
        ["--config_name", "c.json", "--dataset_name", "d", "--output_dir", str(tmp_path), "--do_train"])
    assert (training_args.learning_rate, model_args.backbone_learning_rate) == (5e-5, 1e-5)
    assert (training_args.weight_decay, training_args.max_grad_norm) == (1e-6, 0.1)
    assert training_args.num_train_epochs == 140
    assert (training_args.per_device_train_batch_size, training_args.seed) == (12, 42)
    assert model_args.lr_drop == 80 and data_args.fixed_size is None and not training_args.remove_unused_columns

    config = tiny_config(encoder_layers=1, decoder_layers=1, num_labels=3)  # frozen stem + stage1, as the reference
    model = IntrForImageClassification(config)
    dataset = [{"pixel_values": torch.zeros(3, 32, 32), "labels": 0}] * 24
    trainer = run_finetune.IntrTrainer(model=model, args=training_args, train_dataset=dataset,
                                       data_collator=collate_images, backbone_learning_rate=1e-5, lr_drop=80)
    optimizer = trainer.create_optimizer()
    transformer, backbone = optimizer.param_groups
    assert (transformer["lr"], backbone["lr"]) == (5e-5, 1e-5)
    assert transformer["weight_decay"] == backbone["weight_decay"] == 1e-6
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("model.backbone.") for p in backbone["params"])
    assert not any(names[id(p)].startswith("model.backbone.") for p in transformer["params"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in transformer["params"] + backbone["params"]} == trainable
    assert not any(".embedder." in names[id(p)] or ".stages.0." in names[id(p)] for p in backbone["params"])

    scheduler = trainer.create_scheduler(num_training_steps=1000)  # 24 images / 12 = 2 steps per epoch
    for _ in range(159):
        optimizer.step()  # no gradients: only keeps the optimizer-then-scheduler order
        scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([5e-5, 1e-5])  # epoch 79
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([5e-6, 1e-6])  # epoch 80: x0.1


def test_a_fixed_size_training_step_never_waits_for_the_device(tmp_path):
    """On a GPU the host queues a step's kernels ahead of the device unless it reads a device value, which waits for
    everything queued. The recipe's Trainer step reads none at a fixed size: batches are copied from pinned memory
    without waiting (accelerate's non_blocking), the NaN filter that reads every step's loss is off (explicit
    arguments override both), and the collator leaves the pixel mask out of a batch without padding (the model reads
    a given mask on the host: see test_modeling)."""
    base = ["--config_name", "c.json", "--dataset_name", "d", "--output_dir", str(tmp_path), "--do_train"]
    _, _, training_args = run_finetune.parse_arguments(base)
    assert training_args.accelerator_config.non_blocking and training_args.dataloader_pin_memory
    assert not training_args.logging_nan_inf_filter
    _, _, training_args = run_finetune.parse_arguments(
        base + ["--accelerator_config", json.dumps({"non_blocking": False}), "--logging_nan_inf_filter", "true"])
    assert not training_args.accelerator_config.non_blocking and training_args.logging_nan_inf_filter
    for no_pinned_memory in (["--dataloader_pin_memory", "false"], ["--use_cpu"]):
        _, _, training_args = run_finetune.parse_arguments(base + no_pinned_memory)
        assert not training_args.accelerator_config.non_blocking  # a copy from pageable memory blocks anyway

    def example(height, label):
        return {"pixel_values": torch.randn(3, height, 8), "labels": label}

    fixed_size = collate_images([example(8, 0), example(8, 1)])
    assert sorted(fixed_size) == ["labels", "pixel_values"]
    padded = collate_images([example(8, 0), example(6, 1)])
    assert padded["pixel_mask"].sum(dim=(1, 2)).tolist() == [64, 48] and not padded["pixel_mask"][1, 6:].any()


@pytest.mark.parametrize("nan_filter", [False, True])
def test_the_trainer_step_reads_no_tensor_value_on_the_host(tmp_path, nan_filter):
    """Through the IntrTrainer, from each step's begin to its end (forward, backward, clipping, optimizer), nothing
    turns a tensor into a Python value (`item`, `bool`: the ATen op `_local_scalar_dense`), which on a GPU waits for
    the device. transformers' NaN filter, turned back on, reads the loss at every step. (A host read of a CPU tensor
    by `tolist` dispatches no op: the model's own reads are tested under FakeTensorMode in test_modeling.)"""
    from transformers import TrainerCallback

    class ReadsPerStep(TrainerCallback):
        def __init__(self):
            self.counts = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.counting = dispatched_ops()
            self.ops = self.counting.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            self.counting.__exit__(None, None, None)
            self.counts.append(self.ops["_local_scalar_dense"])

    config = tiny_config(encoder_layers=1, decoder_layers=1, num_labels=3)
    _, _, training_args = run_finetune.parse_arguments(
        ["--config_name", "c.json", "--dataset_name", "d", "--output_dir", str(tmp_path), "--do_train", "--use_cpu",
         "--max_steps", "3", "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no",
         "--logging_steps", "100", "--disable_tqdm", "true", "--logging_nan_inf_filter", str(nan_filter)])
    dataset = [{"pixel_values": torch.randn(3, 32, 32), "labels": index % 3} for index in range(6)]
    reads = ReadsPerStep()
    run_finetune.IntrTrainer(model=IntrForImageClassification(config), args=training_args, train_dataset=dataset,
                             data_collator=collate_images, backbone_learning_rate=1e-5, lr_drop=80,
                             callbacks=[reads]).train()
    assert all(count > 0 for count in reads.counts) if nan_filter else reads.counts == [0, 0, 0]


def test_step_schedule_and_scheduler_type_are_exclusive(tmp_path):
    base = ["--config_name", "c", "--dataset_name", "d", "--output_dir", str(tmp_path), "--do_train"]
    with pytest.raises(SystemExit):
        run_finetune.parse_arguments(base + ["--lr_scheduler_type", "cosine"])
    _, _, training_args = run_finetune.parse_arguments(base + ["--lr_drop", "0", "--lr_scheduler_type", "cosine"])
    assert training_args.lr_scheduler_type == "cosine"


def test_multiscale_augmentation_sizes_within_bounds():
    """The reference rule: the shorter side becomes one of REFERENCE_SCALES unless that would make the longer side
    exceed 1333, in which case the longer side is capped at 1333 (give or take DETR's rounding) and the shorter side
    is smaller than every scale that was possible."""
    random.seed(0)
    augmentation = TrainAugmentation()
    capped_seen = False
    for height, width in [(300, 500), (480, 640), (1000, 200), (64, 64)]:
        image = Image.new("RGB", (width, height))
        for _ in range(40):
            short, long = sorted(augmentation(image).size)
            assert long <= 1333 + 2, (height, width, short, long)
            if short not in REFERENCE_SCALES:
                capped_seen = True
                assert long >= 1333 - 2 and short < max(REFERENCE_SCALES), (height, width, short, long)
    assert capped_seen  # the 1000x200 strip always needs the cap


def test_fixed_size_and_flip_only_mirrors():
    random.seed(0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    array = np.asarray(image)
    outcomes = {np.array_equal(np.asarray(TrainAugmentation(flip_prob=0.5).flip(image)), array[:, ::-1])
                for _ in range(30)}
    assert outcomes == {True, False}
    for _ in range(10):
        flipped = np.asarray(TrainAugmentation(flip_prob=0.5).flip(image))
        assert np.array_equal(flipped, array) or np.array_equal(flipped, array[:, ::-1])
    assert np.array_equal(np.asarray(TrainAugmentation(flip_prob=0.0).flip(image)), array)
    assert TrainAugmentation(fixed_size=48).resize(image).size == (48, 48)


def test_padding_masks_match_images():
    images = [torch.rand(3, 10, 7) + 1, torch.rand(3, 6, 12) + 1]
    pixel_values, pixel_mask = pad_images(images)
    assert pixel_values.shape == (2, 3, 10, 12) and pixel_mask.shape == (2, 10, 12)
    for index, image in enumerate(images):
        height, width = image.shape[1:]
        assert pixel_mask[index].sum() == height * width
        assert pixel_mask[index, :height, :width].all()
        assert torch.equal(pixel_values[index, :, :height, :width], image)
        assert (pixel_values[index][:, pixel_mask[index] == 0] == 0).all()


def test_topk_metric_loads_offline_by_path():
    import evaluate

    metric = evaluate.load(str(REPO / "metrics" / "topk_accuracy"))
    scores = [[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]
    assert metric.compute(predictions=scores, references=[1, 1, 0], k=(1, 2)) == {"acc@1": 1 / 3, "acc@2": 2 / 3}


def write_image(path: Path, image: Image.Image, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)


@pytest.fixture
def messy_folder(tmp_path):
    """Two classes; readable odd modes (L, CMYK, 16-bit, RGBA, P) and unreadable files."""
    root = tmp_path / "messy"
    rgb = Image.new("RGB", (16, 12), (200, 10, 10))
    for split in ("train", "val"):
        for label in ("a", "b"):
            write_image(root / split / label / "rgb.png", rgb)
    train_a = root / "train" / "a"
    write_image(train_a / "gray.png", rgb.convert("L"))
    write_image(train_a / "cmyk.jpg", rgb.convert("CMYK"))
    write_image(train_a / "deep.png", Image.fromarray(np.full((12, 16), 40000, dtype=np.uint16)))
    write_image(train_a / "alpha.png", rgb.convert("RGBA"))
    write_image(train_a / "palette.png", rgb.convert("P"))
    (train_a / "empty.jpg").write_bytes(b"")
    (train_a / "text.jpg").write_text("not an image")
    jpeg = train_a / "truncated.jpg"
    write_image(jpeg, Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    (root / "train" / "b" / "notes.txt").write_text("labels")
    return tmp_path


def test_bad_images_are_skipped_with_names_or_refused(messy_folder):
    data = load_image_splits(str(messy_folder), "messy", ["train", "validation"])
    train = data.splits["train"]
    assert data.classes == ["a", "b"]
    assert len(train) == 7 and len(data.splits["validation"]) == 2  # 2 rgb + gray, cmyk, 16-bit, rgba, palette
    assert not data.skipped["validation"]
    # "<path relative to the dataset root>: <reason>", the reason not repeating the path
    notes, *images = data.skipped["train"]
    assert notes == "train/b/notes.txt: not an image file"
    assert sorted(images)[:2] == ["train/a/empty.jpg: the file is empty (0 bytes).",
                                  "train/a/text.jpg: the file is not an image file PIL can read."]
    assert re.fullmatch(r"train/a/truncated\.jpg: [^/]*[Tt]runcated[^/]*", sorted(images)[2]), sorted(images)[2]
    pixels = {Path(row["image"].filename).name: np.asarray(row["image"]) for row in train}
    assert pixels["deep.png"].max() > 0  # not read as 16-bit clipped to white or black
    transform = ImageTransform(IntrImageProcessor(size={"height": 8, "width": 8}))
    batch = collate_images([train.with_transform(transform)[i] for i in range(len(train))])
    assert batch["pixel_values"].shape == (7, 3, 8, 8) and torch.isfinite(batch["pixel_values"]).all()
    with pytest.raises(DataError, match="strict_images"):
        load_image_splits(str(messy_folder), "messy", ["train"], strict_images=True)


def test_folder_layout_errors_before_training(tmp_path):
    rgb = Image.new("RGB", (8, 8))
    for split, label in [("train", "a"), ("train", "b"), ("val", "a"), ("val", "c")]:
        write_image(tmp_path / "d" / split / label / "x.png", rgb)
    with pytest.raises(DataError, match=r"only in train: \['b'\]; only in val: \['c'\]"):
        check_image_folder(tmp_path / "d")
    write_image(tmp_path / "e" / "train" / "a" / "x.png", rgb)
    with pytest.raises(DataError, match=r"no \['val'\] split"):
        check_image_folder(tmp_path / "e")
    (tmp_path / "d" / "val" / "b").mkdir()
    with pytest.raises(DataError, match="has no images"):
        check_image_folder(tmp_path / "d")


def test_label_mismatch_is_an_error_unless_queries_are_reinitialised(tmp_path, monkeypatch):
    model = IntrForImageClassification(tiny_config(num_labels=3, id2label={0: "cat", 1: "dog", 2: "eel"},
                                                   label2id={"cat": 0, "dog": 1, "eel": 2}))
    model.save_pretrained(tmp_path / "model")
    start = str(tmp_path / "model")
    assert training.labels_of(training.load_model(["cat", "dog", "eel"], model_name_or_path=start).config) == [
        "cat", "dog", "eel"]
    with pytest.raises(ValueError, match=r"(?s)\['cat', 'dog', 'eel'\].*\['ant', 'bee'\]"):
        training.load_model(["ant", "bee"], model_name_or_path=start)
    loads = []
    from_pretrained = IntrForImageClassification.from_pretrained.__func__
    monkeypatch.setattr(IntrForImageClassification, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(a) or from_pretrained(cls, *a, **k)))
    for classes in (["ant", "bee"], ["ant", "bee", "cow"]):
        loads.clear()
        new = training.load_model(classes, model_name_or_path=start, reinit_class_queries=True)
        assert len(loads) == 1  # the weights are read once
        assert training.labels_of(new.config) == classes
        assert new.model.class_queries.weight.shape[0] == len(classes)
        assert not torch.equal(new.model.class_queries.weight[:2], model.model.class_queries.weight[:2])
        torch.testing.assert_close(new.presence_head.weight, model.presence_head.weight)


def test_dataset_by_name_goes_through_load_dataset(tmp_path):
    """Without --dataset_path, --dataset_name goes to `load_dataset` as is (a Hub name; here a local folder, which
    `load_dataset` reads as imagefolder with a ClassLabel column)."""
    for split, count in (("train", 3), ("validation", 2)):
        for label in ("cat", "dog"):
            for index in range(count):
                write_image(tmp_path / "hub" / split / label / f"{index}.png", Image.new("RGB", (8, 8)))
    data = load_image_splits(None, str(tmp_path / "hub"), ["train", "validation"])
    assert data.classes == ["cat", "dog"]
    assert {split: len(dataset) for split, dataset in data.splits.items()} == {"train": 6, "validation": 4}
    assert set(data.splits["train"].column_names) >= {"image", "label"}
    with pytest.raises(DataError, match="no split"):
        load_image_splits(None, str(tmp_path / "hub"), ["test"])


def test_activation_checkpointing_bf16_and_dataloader_workers(digits_root, tmp_path, monkeypatch, caplog):
    """Options that come from TrainingArguments: activation (gradient) checkpointing, bf16 autocast on CPU, workers.
    On a CPU without native bf16 dot products (mocked here) the run logs one warning that bf16 is emulated."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.checkpointing = model.is_activation_checkpointing

    probe = Probe()
    config = tiny_digits_config(tmp_path / "config.json")
    monkeypatch.setattr(training, "cpu_flags", lambda: {"avx2", "fma"})
    metrics = run_finetune.main(common_args(digits_root, config, tmp_path / "out") + [
        "--do_train", "--max_steps", "2", "--activation_checkpointing", "--bf16", "--use_cpu",
        "--dataloader_num_workers", "2", "--lr_drop", "0"], callbacks=[probe])
    assert probe.checkpointing and np.isfinite(metrics["train_loss"])
    warnings = [r.getMessage() for r in caplog.records if "bf16" in r.getMessage() and r.levelname == "WARNING"]
    assert len(warnings) == 1 and "no native bf16 dot products" in warnings[0] and "emulated" in warnings[0]


def test_torch_compile_trains_evaluates_and_saves_the_usual_folder(small_digits_root, tmp_path, monkeypatch):
    """`--torch_compile` (the README's advice for fixed-size GPU training) compiles the model, trains and evaluates
    through it, and saves weights under their own names (no `_orig_mod.` prefix) that load back into INTR. Dynamo's
    `eager` backend traces without generating code, which keeps this test fast."""
    torch.compiler.reset()  # dynamo's caches (and their recompile limit) are per function, shared across tests
    compiled = []
    compile_model = torch.compile

    def recording_compile(model, *args, **kwargs):
        compiled.append((type(model).__name__, kwargs.get("backend")))
        return compile_model(model, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    config = tiny_digits_config(tmp_path / "config.json", dropout=0.1)
    output_dir = tmp_path / "out"
    metrics = run_finetune.main(common_args(small_digits_root, config, output_dir, size=32) + [
        "--do_train", "--do_eval", "--max_steps", "3", "--torch_compile", "--torch_compile_backend", "eager",
        "--use_cpu"])
    assert compiled == [("IntrForImageClassification", "eager")]
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["eval_loss"])
    saved = load_file(output_dir / "model.safetensors")
    assert not [key for key in saved if "_orig_mod" in key]
    model = IntrForImageClassification.from_pretrained(output_dir)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in saved.items())


# ----------------------------------------------------------------------------------------------- bad input


def error_line(argv: list[str], capsys) -> str:
    """Run the command line in process: it must fail with one `error: ...` line and no traceback; returns the line."""
    code = run_finetune.cli(argv)
    out, err = capsys.readouterr()
    assert code == 1, (out + err)[-3000:]
    assert "Traceback" not in out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err[-3000:]
    return last


class ArbitraryCode:
    """Pickled as a call of os.system: a checkpoint that would run code when unpickled without weights_only."""

    def __reduce__(self):
        return os.system, ("echo this must never run",)


OS_SYSTEM = re.escape(f"{os.system.__module__}.system")  # the global ArbitraryCode's pickle imports (posix.system)


def two_class_folder(root: Path, splits=("train", "val"), classes=("a", "b")) -> Path:
    for split in splits:
        for label in classes:
            write_image(root / "d" / split / label / "x.png", Image.new("RGB", (8, 8), (200, 10, 10)))
    return root


def intr_folder(path: Path, labels=("a", "b")) -> Path:
    id2label = dict(enumerate(labels))
    IntrForImageClassification(tiny_config(num_labels=len(labels), id2label=id2label,
                                           label2id={v: k for k, v in id2label.items()})).save_pretrained(path)
    return path


def bad_data(case: str, tmp_path: Path) -> list[str]:
    """--dataset_path / --dataset_name arguments of a broken dataset (see test_data_errors_are_one_line)."""
    root = tmp_path / "data"
    if case == "strict_images":
        two_class_folder(root)
        (root / "d" / "train" / "a" / "broken.png").write_bytes(b"not a png")
        return ["--dataset_path", str(root), "--dataset_name", "d", "--strict_images"]
    if case == "empty class":
        two_class_folder(root)
        (root / "d" / "train" / "c").mkdir()
        (root / "d" / "val" / "c").mkdir()
    elif case == "class only in one split":
        two_class_folder(root)
        write_image(root / "d" / "val" / "c" / "x.png", Image.new("RGB", (8, 8)))
    elif case == "missing split":
        two_class_folder(root, splits=("train",))
    elif case == "one class":
        two_class_folder(root, classes=("a",))
    elif case == "classes differ from the model's":
        two_class_folder(root, classes=("ant", "bee"))
    return ["--dataset_path", str(root), "--dataset_name", "d"]


@pytest.mark.parametrize("case, message", [
    ("strict_images", r"unreadable file.*--strict_images.*broken\.png"),
    ("empty class", r"Class folder \S+/c has no images"),
    ("class only in one split", r"different classes: only in train: \[\]; only in val: \['c'\]"),
    ("missing split", r"no \['val'\] split"),
    ("one class", r"Classification needs at least two classes; 'd' has 1: \['a'\]"),
    ("classes differ from the model's", r"classes differ.*\['a', 'b'\].*\['ant', 'bee'\].*--reinit_class_queries"),
])
def test_data_errors_are_one_line(case, message, tmp_path, capsys):
    model = intr_folder(tmp_path / "model")
    line = error_line(["--model_name_or_path", str(model), "--output_dir", str(tmp_path / "out"), "--do_train",
                       "--do_eval", "--report_to", "none", *bad_data(case, tmp_path)], capsys)
    assert re.search(message, line), line


def bad_start(case: str, tmp_path: Path) -> str:
    """A --model_name_or_path that cannot be a starting point (see test_starting_point_errors_are_one_line)."""
    if case == "missing relative path":
        return "./no-such-model"
    if case == "missing absolute path":
        return str(tmp_path / "no-such-model")
    if case == "unsafe pickle":
        torch.save({"model": {"query_embed.weight": ArbitraryCode()}}, tmp_path / "evil.pth")
        return str(tmp_path / "evil.pth")
    folder = intr_folder(tmp_path / case.replace(" ", "-"))
    weights = folder / "model.safetensors"
    if case == "folder without weights":
        weights.unlink()
    elif case == "zero-byte weights":
        weights.write_bytes(b"")
    elif case == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "config that is not JSON":
        (folder / "config.json").write_text("{not json")
    elif case == "unsafe pickle in a model folder":
        weights.unlink()
        torch.save({"presence_head.weight": ArbitraryCode()}, folder / "pytorch_model.bin")
    return str(folder)


@pytest.mark.parametrize("case, message", [
    ("missing relative path", r"--model_name_or_path \./no-such-model does not exist \(no such file or folder\)"),
    ("missing absolute path", r"no-such-model does not exist"),
    ("folder without weights", r"has no weights \(none of model\.safetensors"),
    ("zero-byte weights", r"model\.safetensors is empty \(0 bytes\)"),
    ("truncated weights", r"Cannot load the weights of \S+: \S+/model\.safetensors is not a readable safetensors file: "
                          r"it is truncated or damaged"),
    ("unsafe pickle", rf"Refusing to load \S+evil\.pth: it is unsafe, unpickling it would import {OS_SYSTEM}"),
    ("unsafe pickle in a model folder", rf"Cannot load the weights of \S+: Refusing to load \S+/pytorch_model\.bin: "
                                        rf"it is unsafe, unpickling it would import {OS_SYSTEM}"),
    ("config that is not JSON", r"could not be read \(OSError: .*not a valid JSON"),
])
def test_starting_point_errors_are_one_line(case, message, tmp_path, capsys):
    root = two_class_folder(tmp_path / "data")
    line = error_line(["--model_name_or_path", bad_start(case, tmp_path), "--dataset_path", str(root),
                       "--dataset_name", "d", "--output_dir", str(tmp_path / "out"), "--do_eval", "--report_to",
                       "none"], capsys)
    assert re.search(message, line), line
    assert "weights_only" not in line  # PyTorch's advice to load unsafely never reaches the user
    assert "this must never run" not in capsys.readouterr().out


def test_non_empty_output_folder_is_refused_unless_overwrite_or_resume(small_digits_root, tmp_path, capsys):
    """transformers' convention: a previous run's folder is refused; --overwrite_output_dir leaves nothing of it
    (its eval results are not merged into the new all_results.json, its checkpoints are gone)."""
    config = tiny_digits_config(tmp_path / "config.json")
    output_dir = tmp_path / "out"
    (output_dir / "checkpoint-99").mkdir(parents=True)
    (output_dir / "checkpoint-99" / "model.safetensors").write_bytes(b"previous run, 3 classes")
    (output_dir / "eval_results.json").write_text(json.dumps({"eval_acc@1": 0.25, "eval_previous_run": 1}))
    (output_dir / "all_results.json").write_text(json.dumps({"eval_acc@1": 0.25, "eval_previous_run": 1}))
    arguments = common_args(small_digits_root, config, output_dir, size=32) + [
        "--do_train", "--do_eval", "--max_steps", "1", "--lr_drop", "0"]
    line = error_line(arguments, capsys)
    assert "--output_dir" in line and "is not empty" in line and "--overwrite_output_dir" in line
    line = error_line(arguments + ["--resume_from_checkpoint", "True"], capsys)
    assert "Nothing to resume" in line and "checkpoint-99: " in line  # resuming is allowed, but that one is broken
    line = error_line(common_args(small_digits_root, config, tmp_path, size=32) + [
        "--do_train", "--max_steps", "1", "--overwrite_output_dir"], capsys)
    assert "would delete" in line  # the folder holding the config (and the data) is never cleared

    run_finetune.main(arguments + ["--overwrite_output_dir"])
    assert not (output_dir / "checkpoint-99").exists()
    results = json.loads((output_dir / "all_results.json").read_text())
    assert "eval_previous_run" not in results and results["eval_num_images"] == 10
    assert "eval_previous_run" not in json.loads((output_dir / "eval_results.json").read_text())


def test_missing_training_dependency_is_one_pip_line(monkeypatch, capsys):
    import runpy

    monkeypatch.setitem(sys.modules, "evaluate", None)  # `import evaluate` fails as if not installed
    monkeypatch.setattr(sys, "argv", ["run_finetune.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "run_finetune.py"), run_name="__main__")
    assert exit_info.value.code == "error: run_finetune.py needs evaluate: pip install 'intr-transformers[train]'"
    with pytest.raises(ImportError, match=r"pip install 'intr-transformers\[train\]'"):
        runpy.run_path(str(REPO / "run_finetune.py"), run_name="imported")


def test_help_starts_with_a_description_and_the_intr_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_finetune.cli(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    description = text.index("Fine-tune and evaluate INTR")
    groups = [text.index(name) for name in ("\nINTR model:", "\nINTR data:", "\nTrainer (transformers")]
    assert description < groups[0] < groups[1] < groups[2]
    assert "--reinit_class_queries" in text[groups[0]:groups[1]] and "--overwrite_output_dir" in text[groups[2]:]


def test_bf16_emulation_is_detected_from_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(training, "cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    assert not training.bf16_is_native(cpu)
    for flag in ("avx512_bf16", "amx_bf16", "bf16"):
        monkeypatch.setattr(training, "cpu_flags", lambda flag=flag: {"avx2", flag})
        assert training.bf16_is_native(cpu)
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, s=supported: s)
        assert training.bf16_is_native(torch.device("cuda")) is supported


@pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"reference fixtures not found at {FIXTURES}")
def test_conversion_on_the_fly_logs_the_converters_summary(small_digits_root, tmp_path, caplog):
    checkpoint = FIXTURES / "official_intr_r18" / "checkpoint.pth"
    with caplog.at_level("INFO"):
        metrics = run_finetune.main(["--model_name_or_path", str(checkpoint), "--reinit_class_queries",
                                     "--dataset_path", str(small_digits_root), "--dataset_name", "digits",
                                     "--output_dir", str(tmp_path), "--do_eval", "--fixed_size", "32",
                                     "--report_to", "none", "--dataloader_pin_memory", "false"])
    summaries = [r.getMessage() for r in caplog.records if r.name.startswith("modeling_intr") and r.levelname == "INFO"]
    assert any("checkpoint.pth" in message and "10" in message for message in summaries), caplog.text[-3000:]
    assert metrics["eval_num_images"] == 10


def test_write_digits_card_renders_the_intr_card_from_the_saved_metrics(trained, tmp_path, capsys):
    import write_digits_card

    with pytest.raises(SystemExit) as exit_info:
        write_digits_card.main(["--help"])
    assert exit_info.value.code == 0
    output_dir, metrics = trained
    folder = shutil.copytree(output_dir, tmp_path / "model")
    write_digits_card.main([str(folder)])
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "# INTR (" in card and "intr-digits" in card  # the package's INTR card
    assert 'from_pretrained("examples/intr-digits", trust_remote_code=True)' in card
    assert re.search(rf"acc@1 \| {metrics['eval_acc@1']:.4g} \|", card) and "| Length | 9 epochs" in card
    assert re.search(r"images evaluated \| 201 \|", card)


def test_datasets_log_lines_are_printed_once(tmp_path):
    """datasets prints its records through its own handler; they must not also reach the root handler that
    run_finetune.py sets up (each line would be printed twice). The converter's summary (INFO) is shown."""
    import logging

    _, _, training_args = run_finetune.parse_arguments(
        ["--config_name", "c.json", "--dataset_name", "d", "--output_dir", str(tmp_path), "--do_train"])
    run_finetune.setup_logging(training_args)
    datasets_logger = logging.getLogger("datasets")
    assert datasets_logger.handlers and not datasets_logger.propagate
    assert logging.getLogger("modeling_intr.convert").isEnabledFor(logging.INFO)
