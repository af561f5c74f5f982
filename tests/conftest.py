"""Shared test helpers: the reference fixtures and how to compare with them, a tiny INTR config, a clean subprocess
environment."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the scripts at the top level (run_finetune, app, the converter) and benchmarks/
# ../shared/fixtures: outputs of the authors' reference code (INTR_FIXTURES names another copy, e.g. on a GPU machine)
FIXTURES = Path(os.environ.get("INTR_FIXTURES") or REPO.parent / "shared" / "fixtures")
# Where the reference-parity tests run the model: the CPU, or INTR_TEST_DEVICE=cuda on a GPU machine. There TF32 is
# switched off (PyTorch's default lets cuDNN convolutions round inputs to TF32), so float32 means float32.
TEST_DEVICE = os.environ.get("INTR_TEST_DEVICE", "cpu")
if TEST_DEVICE.startswith("cuda"):
    import torch

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
requires_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"reference fixtures not found at {FIXTURES} (absent from a fresh clone)"
)


# How results are compared with the reference, in one place. The float64 reference outputs are the truth: a faithful
# implementation run in float64 matches them to ~1e-13 on any CPU or GPU, so FLOAT64_TOLERANCE proves exactness.
# float32 results depend on each CPU's kernels (summation order differs between AVX2, AVX-512 and ARM), so they are
# compared with the float64 truth, never with the float32 file made on another machine: the bound is float32's
# machine epsilon times a fixed error-growth budget of 2**10 for a network of this depth, relative to the size of
# the compared values (1e-4 for attention weights, ~2e-3 for logits of magnitude 16). The reference's own float32
# run lies 5-10x inside it on every output.
FLOAT64_TOLERANCE = 1e-10
FLOAT32_ERROR_GROWTH = 2**10


def float32_tolerance(truth) -> float:
    """Absolute tolerance for a float32 result against its float64 `truth` (a tensor): eps32 * 2**10 * scale."""
    import torch

    return torch.finfo(torch.float32).eps * FLOAT32_ERROR_GROWTH * max(1.0, float(truth.abs().max()))


MEASURED_DIFFERENCES = {}  # (test, dtype) -> its comparison closest to the tolerance; printed at the end


def assert_matches_truth(actual, truth, name: str = "output") -> None:
    """`actual` (float32 or float64) agrees with the float64 `truth` within the tolerance of `actual`'s dtype."""
    import torch

    tolerance = FLOAT64_TOLERANCE if actual.dtype == torch.float64 else float32_tolerance(truth)
    difference = float((actual.detach().cpu().double() - truth.double()).abs().max())
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0].split("::")[-1]
    worst = MEASURED_DIFFERENCES.get((test, actual.dtype))
    if worst is None or difference / tolerance > worst[0] / worst[1]:
        MEASURED_DIFFERENCES[(test, actual.dtype)] = (difference, tolerance, name)
    assert difference <= tolerance, f"{name}: max difference {difference:.3g} > tolerance {tolerance:.3g} ({actual.dtype})"


def pytest_terminal_summary(terminalreporter):
    """Per test and dtype, the measured distance closest to its tolerance, with the CPU it was measured on."""
    if not MEASURED_DIFFERENCES:
        return
    import torch

    where = f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    if TEST_DEVICE != "cpu":
        where = f"{TEST_DEVICE}: {torch.cuda.get_device_name()}"
    terminalreporter.section(f"distance from the float64 reference ({where})")
    for (test, dtype), (difference, tolerance, name) in sorted(MEASURED_DIFFERENCES.items(), key=str):
        dtype = str(dtype).replace("torch.", "")
        terminalreporter.write_line(f"{difference:9.2e} <= {tolerance:8.2e}  {dtype:8s} {test}: {name}")


def reference_fixture(name: str = "official_intr_r18") -> dict:
    """Paths of one reference model's fixture folder: `checkpoint`, `io` (float32 outputs), `io_float64`, `args`."""
    folder = FIXTURES / name
    return {
        "checkpoint": folder / "checkpoint.pth",
        "io": folder / "reference_io.safetensors",
        "io_float64": folder / "reference_io_float64.safetensors",
        "args": folder / "reference.json",
    }


def graph_nodes(output):
    """Every autograd node the backward of `output` runs."""
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return list(seen)


def is_convolution_backward(node) -> bool:
    """A convolution's backward node: autograd's own, or the one whose weight gradient runs in NCHW (AVX2 CPUs)."""
    return type(node).__name__ in ("ConvolutionBackward0", "_ConvolutionWithNchwWeightGradientBackward")


def bottleneck_backbone_config():
    """A tiny bottleneck-block ResNet (ResNet-50's block type; depths 1, 2, 1), for tests of the backbone's blocks."""
    from transformers import ResNetConfig

    return ResNetConfig(
        layer_type="bottleneck", depths=[1, 2, 1], hidden_sizes=[16, 32, 64], embedding_size=8, out_features=["stage3"]
    )


def tiny_config(**overrides):
    """A small random INTR (basic-block ResNet, stride 16) that runs in milliseconds on CPU."""
    from transformers import ResNetConfig

    from modeling_intr import IntrConfig

    arguments = dict(
        backbone_config=ResNetConfig(
            layer_type="basic", depths=[1, 1, 1], hidden_sizes=[8, 16, 32], embedding_size=8, out_features=["stage3"]
        ),
        d_model=32,
        num_attention_heads=4,
        encoder_layers=2,
        decoder_layers=2,
        ffn_dim=64,
        num_labels=5,
    )
    arguments.update(overrides)
    return IntrConfig(**arguments)


def clean_subprocess_env() -> dict:
    """Environment for a subprocess that must not see this project (remote-code loading as a Hub user would)."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONNOUSERSITE="1")
    env["PYTHON_FOR_TESTS"] = sys.executable
    return env
