"""The model's own train step and `output_attentions` cost, `today` against `ours`, in one process (no Trainer).

Where `benchmarks/bench_train.py` times the whole training path (data, Trainer, accelerate), this times what the
model decides, with less noise: every configuration runs interleaved with the others, step after step, and the
table gives medians. The reference-size INTR (ResNet-50, stem and stage 1 frozen, 6 + 6 layers, 200 classes),
random pixels, at the recipe's batch (12):

- train step (forward + backward + gradient clipping + fused AdamW), float32 and bf16 autocast, on a 448x448 batch
  and on a multi-scale-like padded batch (shorter sides drawn from the recipe's 480..800, 4:3 images, padded to the
  largest), with peak memory (`max_memory_allocated` on GPU);
- configurations: `today` (the code before issue 11, `benchmarks/unfolded_backbone.py`), `ours`, and `function
  fold`: ours with each trainable convolution folded by a Python autograd Function that keeps the weight and the
  scale for the backward and scales again there, instead of autograd through `conv2d(x, weight * scale)` (~90 MB of
  scaled weights fewer kept until the backward, but a Python Function's host work per convolution and step);
- on CUDA, one profiled 448 float32 step per configuration: total kernel time and kernel count against the step's
  wall time (kernel time well below wall time: the step is bound by the host's per-op work, not by the GPU);
- the `output_attentions=True` cost of the float32 and bf16 forward at batch 1 (one 800x1028 image): the eager
  attention that returns the weights against sdpa;
- the host work of one trainable folded convolution, forward + backward, for `ours` and `function fold`: 40 chained
  1x1 convolutions of 8 channels on a 2x2 map, whose kernels do next to nothing;
- the host work of the whole train step on the GPU's code paths, `today` against `ours`, per phase (forward, backward,
  clipping + optimizer) and in dispatched ATen ops that do work (views and aliases left out): the reference depth
  (ResNet-50's blocks, 6 + 6 layers) at widths so small (ResNet channels / 16, d_model 32, 4 classes, one 64x64 image)
  that each kernel costs next to nothing, without attention dropout (sdpa is then one fused op per attention and its
  backward one, as on a GPU) and, on a CPU, with torch's dropout (one fused kernel on a GPU) and without the CPU-only
  convolution routing (`without_cpu_only_routing`; both parts on host work). Where a GPU's 448 step is
  bound by the host (`train` below: kernel time well under wall time), its speed-up follows this one's; run on a CPU,
  it needs no GPU;
- the tensors autograd saves for the backward of one 448 training forward, per configuration (MiB, parameters
  excluded, each storage counted once): the activation memory a step holds at its peak, on any device;
- the FLOPs of the convolutions and matmuls of one 448 training forward + backward per image: the arithmetic no
  configuration can remove, which sets a floor under a GPU's kernel time;
- the 448 float32 train step back to back: blocks of `--steps` steps with no synchronisation between the steps, as
  a training loop runs them at a fixed size (nothing read on the host), so that on a GPU the host queues the next
  step while the device finishes this one: where the per-step medians above add the host's and the device's
  unhidden work, this gives the larger of the two;
- with `--compile`, the 448 float32 train step of `torch.compile(model)` against eager `ours`, interleaved, with the
  first step (compilation included) reported on its own.

`--parts` picks among `host`, `attentions`, `saved`, `flops`, `train` (all by default):

    python benchmarks/bench_step.py --device cuda
    python benchmarks/bench_step.py --device cpu --steps 2                         # seconds per step on a CPU
    python benchmarks/bench_step.py --device cpu --parts host saved                # a minute in all
    python benchmarks/bench_step.py --device cpu --parts saved --batch_size 2
    python benchmarks/bench_step.py --device cuda --parts train --compile
"""

import argparse
import contextlib
import random
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_forward import (  # noqa: E402
    PartTimer,
    configuration,
    dispatched_ops,
    hardware_line,
    padded_batch,
    tensors_saved_for_backward,
)
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import ResNetConfig  # noqa: E402
from unfolded_backbone import patched, unfolded_backbone  # noqa: E402

import modeling_intr.modeling_intr as modeling  # noqa: E402
from modeling_intr import IntrConfig, IntrForImageClassification  # noqa: E402

_shipped_forward = modeling.IntrConvNormActivation.forward


class _FoldedConvolution(torch.autograd.Function):
    """`conv(x, weight * scale) + bias` saving `x`, `weight` and `scale` (not their product) for the backward."""

    @staticmethod
    def forward(ctx, hidden_states, weight, scale, bias, conv):
        device = hidden_states.device.type
        if torch.is_autocast_enabled(device):  # the input conv2d would save: in the autocast dtype
            hidden_states = hidden_states.to(torch.get_autocast_dtype(device))
        ctx.save_for_backward(hidden_states, weight, scale)
        ctx.conv = conv
        dtype = hidden_states.dtype
        return modeling._convolve(hidden_states, (weight * scale).to(dtype), bias.to(dtype), conv)

    @staticmethod
    def backward(ctx, grad_output):
        (hidden_states, weight, scale), conv = ctx.saved_tensors, ctx.conv
        grad_input, grad_folded, _ = torch.ops.aten.convolution_backward(
            grad_output, hidden_states, (weight * scale).to(hidden_states.dtype), None, conv.stride, conv.padding,
            conv.dilation, False, [0, 0], conv.groups, [ctx.needs_input_grad[0], True, False])
        return grad_input, grad_folded.to(weight.dtype).mul_(scale), None, None, None


def _function_fold_forward(self, hidden_states, residual=None):
    sources, conv = self._sources(), self.convolution
    if not (torch.is_grad_enabled() and conv.weight.requires_grad) or any(t.requires_grad for t in sources[1:]):
        return _shipped_forward(self, hidden_states, residual)
    scale, bias = self._cached(sources[1:], self.scale_and_folded_bias)
    hidden_states = _FoldedConvolution.apply(hidden_states, conv.weight, scale, bias, conv)
    if residual is not None:
        hidden_states += residual
    return self.activation(hidden_states)


@contextlib.contextmanager
def function_fold():
    modeling.IntrConvNormActivation.forward = _function_fold_forward
    try:
        yield
    finally:
        modeling.IntrConvNormActivation.forward = _shipped_forward


CONFIGURATIONS = {"today": lambda: configuration("today"), "ours": lambda: configuration("ours"),
                  "function fold": function_fold}


def interleaved(runs: dict, rounds: int, warmup: int, synchronize) -> dict:
    """Seconds of each run per round (the order alternates between rounds), after `warmup` untimed rounds."""
    times = {name: [] for name in runs}
    for index in range(warmup + rounds):
        for name, run in (runs.items() if index % 2 else reversed(list(runs.items()))):
            synchronize()
            start = time.perf_counter()
            run()
            synchronize()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def without_cpu_only_routing():
    """
    The backbone's convolutions as a GPU runs them: no 1x1 dilation into oneDNN (at the tiny sizes of the host-work
    parts oneDNN's per-call work, or ATen's dilated path, would count against ours) and, on AVX2 CPUs, no 3x3 weight
    gradients from NCHW copies (a Python autograd Function in the backward).
    """
    return patched([(modeling, "_dilation", lambda hidden_states, conv: conv.dilation),
                    (modeling, "_weight_gradient_in_nchw", lambda hidden_states, weight, conv: False)])


@contextlib.contextmanager
def ours_on_gpu_paths():
    """`ours` without the choices a GPU never takes: the CPU's dropout mask and the CPU-only convolution routing."""
    with without_cpu_only_routing(), unfolded_backbone(fold=True, channels_last=True, unmasked_without_padding=True,
                                                       dropout_before_relu=True):
        yield


def fold_host_work(device: str, synchronize, chain: int = 40, rounds: int = 50) -> None:
    """Microseconds per trainable folded convolution, forward + backward, where the kernels cost next to nothing."""
    torch.manual_seed(0)
    layer = modeling.IntrConvNormActivation(torch.nn.Conv2d(8, 8, 1, bias=False), modeling.IntrFrozenBatchNorm2d(8),
                                            torch.nn.ReLU()).to(device)
    hidden_states = torch.randn(1, 8, 2, 2, device=device, requires_grad=True)

    def run(name):
        with without_cpu_only_routing(), CONFIGURATIONS[name]():
            output = hidden_states
            for _ in range(chain):
                output = layer(output)
            output.sum().backward()

    times = interleaved({name: lambda name=name: run(name) for name in ("ours", "function fold")}, rounds, 5,
                        synchronize)
    medians = {name: 1e6 * statistics.median(seconds) / chain for name, seconds in times.items()}
    print(f"host work per trainable folded convolution (forward + backward, medians of {rounds}): "
          + ", ".join(f"{name} {us:.1f} us" for name, us in medians.items()))


# ATen ops that only make a view or an alias: every other op does work, on a GPU (about) one kernel launch
ALIASING_OPS = {"view", "_unsafe_view", "_reshape_alias", "t", "transpose", "permute", "expand", "unsqueeze", "squeeze",
                "unflatten", "flatten", "select", "slice", "split", "as_strided", "alias", "detach"}


def step_host_work(device: str, synchronize, rounds: int = 200) -> None:
    """Milliseconds of host work per phase of the whole train step on the GPU's code paths (see the module doc)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a GPU's host dispatches from one thread; tiny CPU kernels gain nothing from more
    torch.manual_seed(0)
    backbone = ResNetConfig(layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[16, 32, 64, 128],
                            embedding_size=4, downsample_in_first_stage=False, downsample_in_bottleneck=False,
                            out_features=["stage4"])
    config = IntrConfig(backbone_config=backbone, d_model=32, ffn_dim=64, num_labels=4, attention_dropout=0.0)
    model = IntrForImageClassification(config).to(device).train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, fused=True)
    pixel_values, labels = torch.randn(1, 3, 64, 64, device=device), torch.zeros(1, dtype=torch.long, device=device)
    # the GPU's paths on a CPU too: every issue-11 choice but the CPU-only ones (`today`: none of them)
    gpu_paths = {"today": unfolded_backbone, "ours": ours_on_gpu_paths}
    phases = ("forward", "backward", "optimizer")
    seconds = {name: {phase: [] for phase in phases + PartTimer.PARTS} for name in gpu_paths}
    ops, part_timer = {}, PartTimer(model, device)

    def step(name):
        part_timer.seconds = {}
        marks = [time.perf_counter()]
        loss = model(pixel_values=pixel_values, labels=labels).loss
        synchronize()
        marks.append(time.perf_counter())
        loss.backward()
        synchronize()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(parameters, 0.1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        marks.append(time.perf_counter())
        for phase, start, end in zip(phases, marks, marks[1:]):
            seconds[name][phase].append(end - start)
        for part, part_seconds in part_timer.seconds.items():
            seconds[name][part].append(part_seconds)

    def run(name):
        with gpu_paths[name]():
            step(name)

    for name, switches in gpu_paths.items():
        with switches():
            step(name)  # the optimizer's state is made in the first step
            with dispatched_ops() as counts:
                step(name)
        ops[name] = sum(count for op, count in counts.items() if op not in ALIASING_OPS)
    warmup = 5
    interleaved({name: lambda name=name: run(name) for name in gpu_paths}, rounds, warmup, synchronize)
    print(f"\nhost work of the whole train step on the GPU's code paths ({device}, medians of {rounds} interleaved "
          "steps):\n")
    print("| configuration | forward (backbone / encoder / decoder) (ms) | backward (ms) | clipping + optimizer (ms) "
          "| step (ms) | working ATen ops |")
    print("|---|---|---|---|---|---|")
    # each configuration's first 2 + warmup steps: the optimizer's first step, the counted one, the warm-up rounds
    medians = {name: {phase: 1000 * statistics.median(times[2 + warmup:]) for phase, times in seconds[name].items()}
               for name in gpu_paths}
    for name, ms in medians.items():
        parts = " / ".join(f"{ms[part]:.2f}" for part in PartTimer.PARTS)
        print(f"| {name} | {ms['forward']:.2f} ({parts}) | {ms['backward']:.2f} | {ms['optimizer']:.2f} | "
              f"{sum(ms[phase] for phase in phases):.2f} | {ops[name]} |")
    today, ours = (sum(medians[name][phase] for phase in phases) for name in gpu_paths)
    print(f"\nspeed-up of the step's host work {today / ours:.2f}x; ours dispatches "
          f"{ops['ours'] / ops['today']:.3f} of today's working ops\n")
    torch.set_num_threads(threads)


def saved_for_backward(model, pixel_values, labels) -> None:
    """MiB of the non-parameter tensors autograd saves for the backward of one training forward, per configuration."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for name, make_configuration in CONFIGURATIONS.items():
        with make_configuration(), tensors_saved_for_backward() as saved:
            model(pixel_values=pixel_values, labels=labels)
        # data_ptr -> bytes: a storage saved by several nodes counts once
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
        activations = sum(nbytes for pointer, nbytes in storages.items() if pointer not in parameters)
        print(f"saved for the backward, {tuple(pixel_values.shape)} float32, {name}: {activations / 2**20:.1f} MiB")


def step_flops(model, device: str) -> None:
    """The matmul and convolution FLOPs of one 448 training forward + backward (`FlopCounterMode`), per image."""
    pixel_values, labels = torch.randn(1, 3, 448, 448, device=device), torch.zeros(1, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        model(pixel_values=pixel_values, labels=labels).loss.backward()
    model.zero_grad(set_to_none=True)
    gflops = {str(op).removeprefix("aten."): count / 1e9 for op, count in counter.get_flop_counts()["Global"].items()}
    convolutions = gflops.pop("convolution", 0) + gflops.pop("convolution_backward", 0)
    print(f"FLOPs of one 448 training forward + backward per image (the same for every configuration): "
          f"convolutions {convolutions:.1f} GFLOP, matmuls {sum(gflops.values()):.1f} GFLOP ("
          + ", ".join(f"{op} {count:.1f}" for op, count in gflops.items()) + ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=12)
    parser.add_argument("--steps", type=int, default=12, help="timed train steps per configuration and input")
    parser.add_argument("--forwards", type=int, default=40, help="timed batch-1 forwards per output_attentions value")
    parser.add_argument("--parts", nargs="+", default=["host", "attentions", "saved", "flops", "train"],
                        choices=["host", "attentions", "saved", "flops", "train"])
    parser.add_argument("--compile", action="store_true", help="with train: also the torch.compile'd 448 step")
    args = parser.parse_args()
    device, cuda = args.device, args.device == "cuda"
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    print(hardware_line(device))
    if "host" in args.parts:
        fold_host_work(device, synchronize)
        step_host_work(device, synchronize)
    torch.manual_seed(0)
    model = IntrForImageClassification(IntrConfig(num_labels=200)).to(device)
    labels = torch.arange(args.batch_size, device=device) % 200

    if "attentions" in args.parts:
        model.eval()
        image = torch.randn(1, 3, 800, 1028, device=device)
        for precision in ("float32", "bf16"):
            def forward(output_attentions, precision=precision):
                with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    model(image, output_attentions=output_attentions)

            times = interleaved({"sdpa": lambda: forward(False), "weights": lambda: forward(True)}, args.forwards, 3,
                                synchronize)
            sdpa, weights = statistics.median(times["sdpa"]), statistics.median(times["weights"])
            print(f"output_attentions=True, {precision}, batch 1: {1000 * weights:.2f} ms against {1000 * sdpa:.2f} "
                  f"ms (medians): {100 * (weights / sdpa - 1):+.1f}%")

    model.train()
    if "saved" in args.parts:
        saved_for_backward(model, torch.randn(args.batch_size, 3, 448, 448, device=device), labels)
    if "flops" in args.parts:
        step_flops(model, device)
    if "train" not in args.parts:
        return
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, fused=True)
    rng = random.Random(0)
    sizes = [(side, round(side * 4 / 3)) for side in (rng.choice(range(480, 801, 32)) for _ in range(args.batch_size))]
    pixel_values, pixel_mask = padded_batch(sizes, device)
    inputs = {"448 fixed": (torch.randn(args.batch_size, 3, 448, 448, device=device), None),
              f"multi-scale ({pixel_values.shape[2]}x{pixel_values.shape[3]} padded)": (pixel_values, pixel_mask)}

    def step(pixels, mask, bf16, forward=model):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = forward(pixel_values=pixels, pixel_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 0.1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    print(f"\nTrain step, batch {args.batch_size}, median of {args.steps} interleaved steps after 2 warm-up\n")
    print("| input | precision | configuration | ms / step | peak memory (MiB) | speed-up vs today |")
    print("|---|---|---|---|---|---|")
    for input_name, (pixels, mask) in inputs.items():
        for precision in ("float32", "bf16"):
            peaks = {}

            def run(name, pixels=pixels, mask=mask, precision=precision):
                with CONFIGURATIONS[name]():
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    step(pixels, mask, precision == "bf16")
                    if cuda:
                        peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated() / 2**20)

            times = interleaved({name: lambda name=name: run(name) for name in CONFIGURATIONS}, args.steps, 2,
                                synchronize)
            today = statistics.median(times["today"])
            for name, seconds in times.items():
                median = statistics.median(seconds)
                peak = f"{peaks[name]:.0f}" if cuda else "-"
                print(f"| {input_name} | {precision} | {name} | {1000 * median:.1f} | {peak} | {today / median:.2f}x |")

    # A training loop reads nothing on the host at a fixed size (no mask, see `collate_images`): the host queues the
    # next step's kernels while the device still runs this one's. Blocks of steps with no synchronisation between them
    pixels, _ = inputs["448 fixed"]  # (the compiled step below takes it too)

    def back_to_back(name):
        with CONFIGURATIONS[name]():
            for _ in range(args.steps):
                step(pixels, None, False)

    blocks = interleaved({name: lambda name=name: back_to_back(name) for name in ("today", "ours")}, 5, 1,
                         synchronize)
    today, ours = (1000 * statistics.median(blocks[name]) / args.steps for name in ("today", "ours"))
    print(f"\n448 fixed float32, blocks of {args.steps} step(s) back to back (no synchronisation between them; "
          f"medians of 5 interleaved blocks): today {today:.1f} ms / step, ours {ours:.1f} ms / step: "
          f"{today / ours:.2f}x")

    if args.compile:  # its warm-up covers the second step's recompilation (the loss sets config.problem_type)
        compiled = torch.compile(model)
        synchronize()
        start = time.perf_counter()
        step(pixels, None, False, compiled)
        synchronize()
        first = time.perf_counter() - start
        runs = {"ours": lambda: step(pixels, None, False), "compiled": lambda: step(pixels, None, False, compiled)}
        times = interleaved(runs, args.steps, 2, synchronize)
        eager, fast = statistics.median(times["ours"]), statistics.median(times["compiled"])
        print(f"\ntorch.compile, 448 float32 train step: first step (compilation included) {first:.1f} s, then "
              f"{1000 * fast:.1f} ms against {1000 * eager:.1f} ms eager ours (medians of {args.steps} interleaved "
              f"steps after 2 warm-up): {eager / fast:.2f}x")

    if cuda:
        pixels, mask = inputs["448 fixed"]
        print("\nOne profiled 448 float32 step (the profiler slows the host: compare kernel time with the medians "
              "above):\n")
        for name in CONFIGURATIONS:
            with CONFIGURATIONS[name]():
                step(pixels, mask, False)
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
                    step(pixels, mask, False)
                    synchronize()
            kernels = [e for e in profiler.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
            kernel_ms = sum(e.self_device_time_total for e in kernels) / 1000
            print(f"{name}: kernel time {kernel_ms:.1f} ms, {sum(e.count for e in kernels)} kernels")


if __name__ == "__main__":
    main()
