"""Forward throughput of INTR at the reference setting, before and after the backbone work, in one process.

ResNet-50 INTR, 200 classes, eval mode, random weights (speed does not depend on them). Inputs: one 800x1028 image
(the CUB photo after the reference transform) and a padded batch of 4 mixed sizes (800x1028, 800x1066, 800x800,
1066x800, padded to 1066x1066). Configurations (see `benchmarks/unfolded_backbone.py`):

- `today`: the backbone before issue 11 (frozen BatchNorm as its own pass, out-of-place ReLU, NCHW in float32): the
  reference-equivalent baseline every ratio is taken against;
- `fold`, `fold+channels-last`: one choice at a time;
- `ours`: the model as shipped (fold + channels-last on CPU and CUDA).

All settings run interleaved (each once per round, best of `--repeats` rounds), so drift in machine load hits them
alike. Each row gives the time split into backbone / encoder / decoder (the rest: input projection, position
embedding, presence head), images/s, and the model FLOP utilisation against a measured float32 (bf16) `torch.mm`
peak. Model FLOPs are counted with `torch.utils.flop_counter` on the unfolded model (multiply-adds x 2).

    python benchmarks/bench_forward.py [--repeats 5] [--device cpu] [--precisions float32 bf16] [--compile]

The transformer part (encoder + decoder on the 25x33 feature map of an 800x1028 image, 200 class queries, float32)
is also timed against the reference's, rebuilt with the same weights (`benchmarks/reference_transformer.py`: DETR's
`nn.MultiheadAttention` layers; its output is checked equal to ours first), interleaved, best of `--repeats`.
`--transformer_only` runs just that comparison (a minute or two).

To measure the AVX2 code path on an AVX-512 machine: `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/bench_forward.py` (ATen, oneDNN and MKL kernels each have their own
dispatch; all three are read at start-up).
"""

import argparse
import collections
import contextlib
import copy
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.reference_transformer import ReferenceTransformer  # noqa: E402
from benchmarks.unfolded_backbone import unfolded_backbone  # noqa: E402
from modeling_intr.training import NATIVE_BF16_CPU_FLAGS, cpu_flags  # noqa: E402
import modeling_intr.modeling_intr as modeling  # noqa: E402
from modeling_intr import IntrConfig, IntrForImageClassification  # noqa: E402

CONFIGURATIONS = {
    "today": dict(),
    "fold": dict(fold=True),
    "fold+channels-last": dict(fold=True, channels_last=True),
    "ours": None,  # nothing switched off
}
PADDED_SIZES = [(800, 1028), (800, 1066), (800, 800), (1066, 800)]


def configuration(name: str):
    switches = CONFIGURATIONS[name]
    return contextlib.nullcontext() if switches is None else unfolded_backbone(**switches)


@contextlib.contextmanager
def tensors_saved_for_backward():
    """
    Within the block, every tensor autograd saves for a backward is appended to the list this yields. The graph keeps
    a detached alias (same storage and version counter): an op's output kept as itself would hold its own node, a
    reference cycle through autograd's C++ that Python's gc cannot free (every forward's graph would leak).
    """
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield saved


class _OpCounter(TorchDispatchMode):
    def __init__(self, counts: collections.Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def dispatched_ops():
    """Within the block, the ATen ops dispatched, counted by name (`"convolution"`, `"_local_scalar_dense"`, ...) in
    the `collections.Counter` this yields."""
    counts = collections.Counter()
    with _OpCounter(counts):
        yield counts


def hardware_line(device: str) -> str:
    """CPU capability (ATen's kernel dispatch), whether bf16 dot products are native, and any ISA caps in effect."""
    if device == "cuda":
        return f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}"
    native = sorted(cpu_flags() & NATIVE_BF16_CPU_FLAGS)  # the detection run_finetune.py's --bf16 warning uses
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("AVX2", "SSE41", "AVX")
    bf16 = "emulated" if not native or capped else "native (" + ", ".join(native) + ")"
    caps = ", ".join(f"{key}={os.environ[key]}" for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                            "MKL_ENABLE_INSTRUCTIONS") if key in os.environ)
    return (f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, bf16: {bf16}, "
            f"threads: {torch.get_num_threads()}, torch {torch.__version__}" + (f", caps: {caps}" if caps else ""))


def padded_batch(sizes, device):
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    pixel_values = torch.zeros(len(sizes), 3, height, width, device=device)
    pixel_mask = torch.zeros(len(sizes), height, width, dtype=torch.long, device=device)
    for index, (h, w) in enumerate(sizes):
        pixel_values[index, :, :h, :w] = torch.randn(3, h, w, device=device)
        pixel_mask[index, :h, :w] = 1
    return pixel_values, pixel_mask


class PartTimer:
    """Wall time of the backbone, encoder and decoder in each forward (forward pre/post hooks)."""

    PARTS = ("backbone", "encoder", "decoder")

    def __init__(self, model, device):
        self.device, self.seconds = device, {}
        for part in self.PARTS:
            module = getattr(model.model, part)
            module.register_forward_pre_hook(lambda *args, part=part: self._mark(part, -1))
            module.register_forward_hook(lambda *args, part=part: self._mark(part, +1))

    def _mark(self, part, sign):
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.seconds[part] = self.seconds.get(part, 0.0) + sign * time.perf_counter()


def matmul_peak(dtype: torch.dtype, device: str, repeats: int, size: int = 4096) -> float:
    """FLOP/s of a size x size x size matrix product, best of `repeats`."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_memory_gib(name: str, device: str) -> float:
    """Peak RSS (CPU) or allocated GPU memory of a fresh process that runs one float32 batch-1 forward in `name`."""
    code = (f"import sys; sys.argv = ['x', '--memory_probe', {name!r}, '--device', {device!r}]; "
            f"sys.path.insert(0, {str(REPO)!r}); import benchmarks.bench_forward as b; b.main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def transformer_part(model, device: str, repeats: int) -> None:
    """Print our encoder + decoder against the reference's transformer at equal shapes and weights (float32)."""
    intr = model.model
    feature_mask = torch.ones(1, 25, 33, dtype=torch.bool, device=device)  # an 800x1028 image's feature map
    features = torch.randn(1, 25 * 33, intr.config.d_model, device=device)  # [b, h*w, d] (values do not matter)
    position_embeddings = intr.position_embedding(feature_mask)
    class_queries = intr.class_queries.weight[None]  # [1, 200, d]
    attention_mask = modeling._additive_key_mask(feature_mask, features.dtype)

    def ours(output_attentions):
        memory = intr.encoder(features, position_embeddings, attention_mask, output_attentions=output_attentions)
        return intr.decoder(class_queries, memory.last_hidden_state, attention_mask,
                            output_attentions=output_attentions).last_hidden_state

    references = {need: ReferenceTransformer(intr, need).eval().to(device) for need in (True, False)}  # need_weights
    runs = {
        "reference (DETR layers: nn.MultiheadAttention, default need_weights=True, cross-attention twice)":
            lambda: references[True](features, position_embeddings, feature_mask, class_queries),
        "reference, attention weights only where INTR uses them (the cross-attention's second call)":
            lambda: references[False](features, position_embeddings, feature_mask, class_queries),
        "ours": lambda: ours(False),
        "ours, output_attentions=True (every attention's weights, per head)": lambda: ours(True),
    }
    best = dict.fromkeys(runs, float("inf"))
    with torch.no_grad():
        difference = (runs["ours"]() - next(iter(runs.values()))()).abs().max().item()
        if difference > 1e-3:
            raise AssertionError(f"the reference-equivalent transformer's output differs from ours by {difference}")
        for _ in range(repeats):
            for name, run in runs.items():
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run()
                if device == "cuda":
                    torch.cuda.synchronize()
                best[name] = min(best[name], time.perf_counter() - start)
    print(f"\nTransformer part (encoder + decoder, 25x33 feature map, 200 class queries, float32, {device}); "
          f"ours vs reference output max difference {difference:.1e}\n")
    print("| transformer | ms | time / ours |\n|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {1000 * seconds:.0f} | {seconds / best['ours']:.2f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bf16"], choices=["float32", "bf16"])
    parser.add_argument("--no_batch", action="store_true", help="skip the padded batch of 4")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the shipped model")
    parser.add_argument("--transformer_only", action="store_true", help="only the transformer-part comparison")
    parser.add_argument("--memory_probe", help=argparse.SUPPRESS)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = IntrForImageClassification(IntrConfig(num_labels=200)).eval().to(args.device)
    single = (torch.randn(1, 3, 800, 1028, device=args.device), None)
    if args.transformer_only:
        transformer_part(model, args.device, args.repeats)
        return
    if args.memory_probe:
        with configuration(args.memory_probe), torch.no_grad():
            model(*single)
        if args.device == "cuda":
            print(torch.cuda.max_memory_allocated() / 2**30)
        else:
            scale = 2**20 if sys.platform != "darwin" else 2**30  # ru_maxrss: KiB on Linux, bytes on macOS
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale)
        return
    batch = padded_batch(PADDED_SIZES, args.device)
    flops = {}
    for name, inputs in (("1", single),) + ((("4", batch),) if not args.no_batch else ()):
        with configuration("today"), FlopCounterMode(display=False) as counter:  # (module tracker needs autograd)
            model(*inputs)
        flops[name] = counter.get_total_flops()
    dtypes = {"float32": torch.float32, "bf16": torch.bfloat16}
    peaks = {p: matmul_peak(dtypes[p], args.device, args.repeats) for p in args.precisions}

    settings = [(p, c, "1", False) for p in args.precisions for c in CONFIGURATIONS]
    settings += [(p, "ours", "1", True) for p in args.precisions]  # output_attentions cost
    if not args.no_batch:
        settings += [(p, c, "4", False) for p in args.precisions for c in ("today", "ours")]
    plain_model = copy.deepcopy(model)  # (for torch.compile: without the timing hooks, which break its graph)
    timer = PartTimer(model, args.device)

    def forward(precision, name, inputs, output_attentions):
        with configuration(name), torch.no_grad(), torch.autocast(
            args.device, dtype=dtypes[precision], enabled=precision != "float32"
        ):
            model(*inputs, output_attentions=output_attentions)

    best = {setting: (float("inf"), {}) for setting in settings}
    for round_ in range(args.repeats + 1):  # round 0 warms up (and fills the folded-weight cache)
        for setting in settings:
            precision, name, batch_name, output_attentions = setting
            timer.seconds = {}
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            forward(precision, name, single if batch_name == "1" else batch, output_attentions)
            if args.device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            if round_ > 0 and seconds < best[setting][0]:
                best[setting] = (seconds, dict(timer.seconds))
        print(f"round {round_} done", file=sys.stderr, flush=True)

    print(hardware_line(args.device))
    print(f"ResNet-50 INTR, 200 classes, eval, {args.device}, best of {args.repeats} interleaved rounds; model GFLOP: "
          + ", ".join(f"batch {name} {count / 1e9:.1f}" for name, count in flops.items()))
    print("matmul peak: " + ", ".join(f"{p} {peaks[p] / 1e9:.1f} GFLOP/s" for p in args.precisions))
    print("\n| precision | configuration | batch | output_attentions | ms / forward | backbone | encoder | decoder "
          "| images/s | FLOP utilisation | speed-up vs today |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for setting in settings:
        precision, name, batch_name, output_attentions = setting
        seconds, parts = best[setting]
        today = best[(precision, "today", batch_name, False)][0]
        images = int(batch_name)
        print(f"| {precision} | {name} | {'1' if images == 1 else '4 padded'} | {output_attentions} | "
              f"{1000 * seconds:.0f} | " + " | ".join(f"{1000 * parts.get(p, 0):.0f}" for p in PartTimer.PARTS)
              + f" | {images / seconds:.2f} | {100 * flops[batch_name] / seconds / peaks[precision]:.0f}% | "
              f"{today / seconds:.2f}x |")
    for precision in args.precisions:
        extra = best[(precision, "ours", "1", True)][0] / best[(precision, "ours", "1", False)][0] - 1
        print(f"output_attentions extra cost ({precision}, ours): {100 * extra:+.1f}%")
    if "bf16" in args.precisions and "float32" in args.precisions:
        ratio = best[("float32", "ours", "1", False)][0] / best[("bf16", "ours", "1", False)][0]
        print(f"bf16 autocast speed-up over float32 (ours): {ratio:.2f}x")

    transformer_part(model, args.device, args.repeats)

    memory = {name: peak_memory_gib(name, args.device) for name in ("today", "ours")}
    print(("peak RSS" if args.device == "cpu" else "peak GPU memory (max_memory_allocated)")
          + ", float32 batch-1 forward in a fresh process: "
          + ", ".join(f"{name} {gib:.2f} GiB" for name, gib in memory.items()))

    if args.compile:
        compiled = torch.compile(plain_model)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(*single)
        compile_seconds = time.perf_counter() - start
        timings = {"eager": float("inf"), "compiled": float("inf")}
        for _ in range(args.repeats):
            for name, function in (("eager", plain_model), ("compiled", compiled)):
                start = time.perf_counter()
                with torch.no_grad():
                    function(*single)
                timings[name] = min(timings[name], time.perf_counter() - start)
        print(f"torch.compile (float32, batch 1, ours): first call (compile) {compile_seconds:.1f} s, then "
              f"{1000 * timings['compiled']:.0f} ms against eager {1000 * timings['eager']:.0f} ms "
              f"({timings['eager'] / timings['compiled']:.2f}x)")


if __name__ == "__main__":
    main()
