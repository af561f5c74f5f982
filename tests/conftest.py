"""Shared test helpers: the reference fixtures' location, a tiny INTR config, a clean subprocess environment."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"  # ../shared/fixtures: outputs of the authors' reference code
requires_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"reference fixtures not found at {FIXTURES} (absent from a fresh clone)"
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
