"""Training throughput of `run_finetune.py` (images/s, peak memory) for the reference-size INTR.

The model is the reference's: ResNet-50 backbone (stem and stage 1 frozen), d_model 256, 8 heads, 6 + 6 layers,
200 class queries (CUB), built from its config (random weights: speed does not depend on them). The data are
random-noise JPEGs of CUB's typical size (500x375) in the reference folder layout, 200 classes, as many images per
class as the steps need to fit in one epoch: at each new epoch the Trainer's loader workers start anew, and the next
batch then took 0.31 s against ~2 ms (2 workers, development CPU). A run on CUB meets that once per 499 steps at batch
12; with one image per class a 40-step run met it twice. For every setting the real training path runs
(`run_finetune.main`: datasets transform, augmentation, collator, `IntrTrainer`, accelerate), and a callback times
each optimizer step; the first `--warmup_steps` are left out.

Settings: 448x448 fixed size vs the reference multi-scale augmentation (shorter side 480..800), float32 vs bfloat16
autocast (`--bf16`), 1 process vs 2 data-parallel processes (`accelerate launch --multi_gpu --num_processes 2`, gloo
on CPU, one thread each), and the backbone before issue 11 ("today": frozen BatchNorm as its own pass over the
activations, NCHW, torch's dropout and sdpa's own attention dropout; `benchmarks/unfolded_backbone.py`, and
transformers' own default optimizer instead of the recipe's pinned fused AdamW: `today_finetune_args`) vs as shipped
("ours"). On CPU use few steps: a ResNet-50 step takes seconds there. Every setting runs in its own process, so
settings do not share a warm state; under a varying machine load run `--rounds 2` or more (settings interleaved, best
of the rounds per setting).

    python benchmarks/bench_train.py                       # CPU, the full table
    python benchmarks/bench_train.py --device cuda         # GPU (and 2 GPUs for the 2-process rows)
    python benchmarks/bench_train.py --processes 1 --rounds 2 --backbones today ours
    python benchmarks/bench_train.py --processes 1 --precisions fp32 --inputs 448 --backbones today ours compiled

Images/s = global batch (per-device batch x processes) / mean step time. Peak memory: the largest peak RSS of the
processes on CPU, the largest `torch.cuda.max_memory_allocated` on GPU.

A second table splits the step (mean seconds, the slowest process): backbone forward, transformer forward (input
projection, encoder, decoder, presence head, loss), transformer backward, backbone backward (on several processes it
ends with the wait for the last gradient all-reduce), gradient clipping, optimizer (AdamW step, scheduler, zero_grad),
and, outside the timed step, the data (the next batch's decoding, augmentation and collation; `--dataloader_num_workers`
0). The boundaries are hooks on the backbone's output and the Trainer's `_clip_grad_norm`; on GPU the phases are
host-side times (kernels run asynchronously) and only their sum is exact: the step starts and ends with a device
synchronisation.

`--throughput` times what a training run gets instead: no synchronisation between the timed steps (at a fixed size
the step reads nothing on the host, so on a GPU the host queues the next step while the device finishes this one),
one at the start of the first and one at the end of the last, data loading included (use `--dataloader_workers` to
take it off the main process). Its phases are then the host's own time in each (the same boundaries): where they add
up to the step time, the host sets the pace and the device waits. `today` then also gets the Trainer's defaults
before issue 11 (the NaN filter, blocking copies, a pixel mask with every batch: `today_finetune_args`,
`today_collate_images`):

    python benchmarks/bench_train.py --device cuda --processes 1 --precisions fp32 --inputs 448 --batch_size 12 \
        --steps 40 --warmup_steps 5 --throughput --dataloader_workers 4
"""

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


NUM_CLASSES = 200  # CUB's


def make_dataset(root: Path, images_per_class: int = 1, num_classes: int = NUM_CLASSES,
                 size: tuple[int, int] = (500, 375)) -> None:
    """Random-noise JPEGs, `root/bench/train/class_XXX/{0,1,...}.jpg`."""
    rng = np.random.default_rng(0)
    for index in range(num_classes):
        folder = root / "bench" / "train" / f"class_{index:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for image_index in range(images_per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{image_index}.jpg", quality=90)


def write_reference_config(path: Path) -> None:
    from modeling_intr import IntrConfig

    IntrConfig(num_labels=NUM_CLASSES).to_json_file(path)  # ResNet-50, 256-d, 6 + 6 layers: the reference defaults


PHASES = ("backbone fwd", "transformer fwd", "transformer bwd", "backbone bwd", "clip", "optimizer", "data")


def today_finetune_args() -> list[str]:
    """
    The training options of the code before issue 11 where `run_finetune.py` now sets its own, transformers' defaults:
    the optimizer (`adamw_torch_fused` with torch >= 2.8, the for-loop `adamw_torch` on CPU before), the NaN filter that
    reads every step's loss on the host, and blocking copies of the batches to the device.
    """
    from transformers import TrainingArguments

    defaults = TrainingArguments.__dataclass_fields__
    return ["--optim", str(defaults["optim"].default),
            "--logging_nan_inf_filter", str(defaults["logging_nan_inf_filter"].default),
            "--accelerator_config", json.dumps({"non_blocking": False})]


def today_collate_images(examples: list[dict]) -> dict:
    """The collator before issue 11: a pixel mask with every batch, all ones at a fixed size (which the model reads)."""
    import torch

    from modeling_intr.data import collate_images

    batch = collate_images(examples)
    if "pixel_mask" not in batch:
        pixel_values = batch["pixel_values"]
        batch["pixel_mask"] = torch.ones(pixel_values.shape[0], *pixel_values.shape[2:], dtype=torch.long)
    return batch


def worker(args: argparse.Namespace) -> None:
    """One setting, in this process (launched alone or by `accelerate launch`): time the steps, print a JSON line."""
    import torch
    from transformers import TrainerCallback

    import run_finetune
    from benchmarks.unfolded_backbone import unfolded_backbone

    class StepTimer(TrainerCallback):
        """Each optimizer step's wall time and its phases (see the module docstring)."""

        def __init__(self):
            self.times, self.phases, self.marks, self.run_start, self.last_end = [], [], {}, None, None

        def mark(self, name):
            self.marks[name] = time.perf_counter()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if compiled:  # hooks inside the compiled model would break its graph: no phases
                return

            def backbone_done(module, inputs, outputs):
                self.mark("backbone_fwd")
                if outputs[0].requires_grad:
                    outputs[0].register_hook(lambda grad: self.mark("backbone_bwd"))

            model.model.backbone.register_forward_hook(backbone_done)
            model.register_forward_hook(lambda module, inputs, outputs: self.mark("forward"))

        def on_step_begin(self, args, state, control, **kwargs):
            if not options.throughput or state.global_step == options.warmup_steps:
                synchronize()
            self.marks = {"start": time.perf_counter()}
            if state.global_step == options.warmup_steps:
                self.run_start = self.marks["start"]

        def on_step_end(self, args, state, control, **kwargs):
            if not options.throughput or state.global_step == options.warmup_steps + options.steps:
                synchronize()
            end = time.perf_counter()
            self.times.append(end - self.marks["start"])
            m = self.marks
            if compiled:
                self.phases.append(dict.fromkeys(PHASES, float("nan")))
                self.last_end = end
                return
            self.phases.append({
                "backbone fwd": m["backbone_fwd"] - m["start"], "transformer fwd": m["forward"] - m["backbone_fwd"],
                "transformer bwd": m["backbone_bwd"] - m["forward"], "backbone bwd": m["clip"] - m["backbone_bwd"],
                "clip": m["clipped"] - m["clip"], "optimizer": end - m["clipped"],
                "data": m["start"] - self.last_end if self.last_end is not None else float("nan"),
            })
            self.last_end = end

    compiled, options = args.backbone == "compiled", args  # (in the callbacks, `args` are the TrainingArguments)
    # the step's kernels finish inside its time, not during the next batch's loading
    synchronize = torch.cuda.synchronize if args.device == "cuda" else lambda: None
    timer = StepTimer()
    clip_grad_norm = run_finetune.IntrTrainer._clip_grad_norm

    def timed_clip_grad_norm(trainer, model):
        timer.mark("clip")
        norm = clip_grad_norm(trainer, model)
        timer.mark("clipped")
        return norm

    run_finetune.IntrTrainer._clip_grad_norm = timed_clip_grad_norm
    # --dataloader_drop_last: every timed step is a full batch. An epoch's last batch can be smaller (8 at batch 12 of
    # 200 images): a shorter step, and for `compiled` a new shape that compiles again (it once read as 3 s per step)
    argv = ["--config_name", str(args.work / "config.json"), "--dataset_path", str(args.work),
            "--dataset_name", "bench", "--output_dir", str(args.work / "out"), "--overwrite_output_dir", "--do_train",
            "--max_steps", str(args.warmup_steps + args.steps), "--per_device_train_batch_size", str(args.batch_size),
            "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--log_level", "error",
            "--log_level_replica", "error", "--dataloader_drop_last", "true",
            "--dataloader_num_workers", str(args.dataloader_workers)]
    if not args.throughput:  # (pinned memory is what lets the copies to a GPU not wait: run_finetune's default)
        argv += ["--dataloader_pin_memory", "false"]
    if args.fixed_size:
        argv += ["--fixed_size", str(args.fixed_size)]
    if args.bf16:
        argv += ["--bf16"]
    if args.device == "cpu":
        argv += ["--use_cpu"]
    if args.backbone == "today":
        argv += today_finetune_args()
    if compiled:
        argv += ["--torch_compile"]
    with unfolded_backbone() if args.backbone == "today" else contextlib.nullcontext():
        if args.backbone == "today":
            run_finetune.collate_images = today_collate_images
        run_finetune.main(argv, callbacks=[timer])
    if args.throughput:  # from the first timed step's start to the last one's end, data included
        step_time = (timer.last_end - timer.run_start) / args.steps
    else:
        step_time = float(np.mean(timer.times[args.warmup_steps:]))
    timed = timer.phases[args.warmup_steps:]
    phases = {name: float(np.nanmean([p[name] for p in timed])) for name in PHASES}  # data: none before step 1
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if args.device == "cpu":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    else:
        peak = torch.cuda.max_memory_allocated() / 2**30
    # every process prints: the table keeps the largest peak and the slowest process's times
    print("RESULT " + json.dumps({"step_s": step_time, "images_per_s": args.batch_size * world_size / step_time,
                                  "peak_gib": peak, "phases": phases, "first_step_s": timer.times[0]}), flush=True)


def run_setting(work: Path, processes: int, fixed_size: int | None, bf16: bool, backbone: str,
                options: argparse.Namespace) -> dict:
    script = [str(Path(__file__).resolve()), "--worker", "--work", str(work), "--device", options.device,
              "--steps", str(options.steps), "--warmup_steps", str(options.warmup_steps),
              "--batch_size", str(options.batch_size), "--backbone", backbone,
              "--dataloader_workers", str(options.dataloader_workers)] + ["--throughput"] * options.throughput
    script += ["--fixed_size", str(fixed_size)] * (fixed_size is not None) + ["--bf16"] * bf16
    if processes == 1:
        command = [sys.executable, *script]
    else:
        accelerate = Path(sys.executable).parent / "accelerate"
        command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "bf16" if bf16 else "no", "--dynamo_backend", "no", *script]
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # keep the caller's path
    env = {**os.environ, "PYTHONPATH": python_path, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if options.device == "cpu" and processes > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or processes) // processes))
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"Setting failed ({' '.join(command)}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    results = [json.loads(line[len("RESULT "):]) for line in lines]
    return {**max(results, key=lambda r: r["step_s"]), "peak_gib": max(r["peak_gib"] for r in results)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per setting")
    parser.add_argument("--warmup_steps", type=int, default=1, help="untimed first steps")
    parser.add_argument("--batch_size", type=int, default=2, help="per device (the reference trains with 12)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backbones", nargs="+", default=["today", "ours"], choices=["today", "ours", "compiled"],
                        help="compiled: ours with run_finetune.py --torch_compile (its first step includes compiling)")
    parser.add_argument("--inputs", nargs="+", default=["448", "multi-scale"], choices=["448", "multi-scale"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; each setting keeps its best")
    parser.add_argument("--throughput", action="store_true",
                        help="no synchronisation between the timed steps: wall time of them all, data included")
    parser.add_argument("--dataloader_workers", type=int, default=0, help="run_finetune's --dataloader_num_workers")
    parser.add_argument("--backbone", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fixed_size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from benchmarks.bench_forward import hardware_line

    sizes = [448 if name == "448" else None for name in args.inputs]
    settings = [(processes, fixed_size, precision, backbone) for processes in args.processes
                for fixed_size in sizes for precision in args.precisions for backbone in args.backbones
                if not (backbone == "compiled" and fixed_size is None)]  # compiled: fixed size only (no recompiles)
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # every step of every setting in the first epoch (drop_last: full batches only, split over the processes)
        images = (args.warmup_steps + args.steps) * args.batch_size * max(args.processes)
        make_dataset(work, images_per_class=math.ceil(images / NUM_CLASSES))
        write_reference_config(work / "config.json")
        for _ in range(args.rounds):
            for setting in settings:
                processes, fixed_size, precision, backbone = setting
                result = run_setting(work, processes, fixed_size, precision == "bf16", backbone, args)
                if setting not in best or result["step_s"] < best[setting]["step_s"]:
                    best[setting] = result
                print(f"done: {setting} {result}", file=sys.stderr, flush=True)
    memory = "peak RSS / process (GiB)" if args.device == "cpu" else "peak GPU memory (GiB)"
    print(hardware_line(args.device))
    timing = (f"{args.steps} steps back to back (data included)" if args.throughput else
              f"mean of {args.steps} synchronised steps")
    print(f"\nINTR ResNet-50, {NUM_CLASSES} classes, batch {args.batch_size} per device, {args.device}, {timing} after "
          f"{args.warmup_steps} warm-up, {args.dataloader_workers} data loader worker(s), best of {args.rounds} "
          "round(s)\n")
    print(f"| processes | input | precision | backbone | s / step | images / s | {memory} | speed-up vs today |")
    print("|---|---|---|---|---|---|---|---|")
    def row_start(setting) -> str:
        processes, fixed_size, precision, backbone = setting
        return f"| {processes} | {'448 fixed' if fixed_size else 'multi-scale'} | {precision} | {backbone} | "

    for setting in settings:
        result = best[setting]
        today = best.get((*setting[:3], "today"))
        speed_up = f"{today['step_s'] / result['step_s']:.2f}x" if today else "-"
        print(row_start(setting) + f"{result['step_s']:.3f} | {result['images_per_s']:.2f} | "
              f"{result['peak_gib']:.3f} | {speed_up} |")  # (a GPU step is tens of ms)
    if args.throughput:  # nothing waits for the device: each phase is the host's own time in it
        print("\nThe host's time per phase (s, mean of the timed steps; data: between the steps). Where they "
              "add up to the step, the host sets the pace:\n")
    else:
        print("\nWhere the step goes (s, mean of the timed steps of the run above; data: outside the timed step):\n")
    print("| processes | input | precision | backbone | " + " | ".join(PHASES) + " |")
    print("|---|---|---|---|" + "---|" * len(PHASES))
    for setting in settings:
        print(row_start(setting) + " | ".join(f"{best[setting]['phases'][name]:.3f}" for name in PHASES) + " |")
    for setting in settings:
        if setting[3] == "compiled":
            print(f"compiled {setting[:3]}: first step (compilation included) {best[setting]['first_step_s']:.1f} s")


if __name__ == "__main__":
    main()
