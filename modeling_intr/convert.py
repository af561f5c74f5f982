"""Convert DETR and INTR checkpoints into Hub-ready INTR folders (the library of `convert_detr_checkpoint.py`).

`convert_checkpoint` = the conversion pipeline (`checkpoints.convert_with_summary`) + the folder: `config.json`
(with `auto_map`), `model.safetensors`, `preprocessor_config.json`, the code bundle and a model card
(`model_card.intr_model_card`), written atomically (`hub_folder`), then optionally uploaded.
"""

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import ModelCard

from .checkpoint_layouts import LAYOUTS, detect_layout
from .checkpoints import ConversionSummary, convert_to_model, convert_with_summary, expand_class_queries
from .hub_folder import (
    OutputDirError,
    PushToHubError,
    check_output_dir,
    push_folder_to_hub,
    remove_stale_staging,
    write_atomically,
)
from .image_processing_intr import IntrImageProcessor
from .model_card import intr_model_card
from .modeling_intr import IntrForImageClassification

logger = logging.getLogger(__name__)


def conversion_card(config, summary: ConversionSummary, repo_id: str) -> ModelCard:
    """The model card of a converted folder: where the weights come from and how they were converted."""
    if summary.layout == "intr_reference":
        origin = "These are the authors' trained INTR weights, converted without change."
    else:
        origin = ("The transformer and backbone come from DETR (object detection on COCO); the class queries and "
                  "presence head are a fine-tuning start, **not a trained classifier**: fine-tune it (e.g. with "
                  "`run_finetune.py`) first.")
    origin += f" Converted with `convert_detr_checkpoint.py` from `{summary.source}`."
    details = [
        ("Source checkpoint", f"`{summary.source}`"),
        ("SHA-256", f"`{summary.sha256 or 'n/a (converted from memory)'}`"),
        ("Source layout", f"`{summary.layout}`: {LAYOUTS[summary.layout]}"),
        *((f"`{name}`", f"{value} ({where})") for name, (value, where) in summary.config_origins.items()),
        ("Class queries", summary.class_queries),
        ("Presence head", summary.presence_head),
        ("Dropped", summary.dropped_text),
    ]
    return intr_model_card(config, origin=origin, details=details, repo_id=repo_id)


def convert_checkpoint(
    checkpoint: str | Path | Mapping,
    output_dir: str | Path,
    *,
    id2label: Mapping[int, str] | Sequence[str] | None = None,
    num_labels: int | None = None,
    noise_frac: float = 0.1,
    seed: int = 42,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    reinit_class_queries: bool = False,
    **config_overrides,
) -> IntrForImageClassification:
    """
    Convert a checkpoint (see `checkpoints.convert_with_summary` for the arguments) and write a Hub-ready folder.

    The folder is written to a hidden sibling and renamed to `output_dir` only when complete (staging folders left by
    a killed earlier run are removed first); an existing non-empty `output_dir` needs `overwrite=True`, and a path that
    cannot be a folder raises `OutputDirError`. With `push_to_hub="user/repo"` the finished folder is then uploaded
    (`private` for a new private repo); a failed upload raises `PushToHubError`, leaving the folder in place. The
    summary is logged at INFO level on this module's logger.
    """
    output_dir = Path(os.path.abspath(output_dir))
    check_output_dir(output_dir, overwrite)
    if not isinstance(checkpoint, Mapping) and output_dir.resolve() in Path(checkpoint).resolve().parents:
        raise OutputDirError(
            f"The checkpoint {checkpoint} is inside --output_dir {output_dir}, which would replace it."
        )
    conversion = convert_with_summary(
        checkpoint, id2label=id2label, num_labels=num_labels, noise_frac=noise_frac, seed=seed,
        reinit_class_queries=reinit_class_queries, **config_overrides,
    )
    model, summary = conversion.model, conversion.summary
    card = conversion_card(model.config, summary, push_to_hub or output_dir.name)
    for stale in remove_stale_staging(output_dir):
        summary.notes.append(f"removed {stale.name}, left by an interrupted earlier conversion")

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        IntrImageProcessor().save_pretrained(folder)
        card.save(folder / "README.md")

    write_atomically(output_dir, write)
    summary.output_dir, summary.files = output_dir, sorted(path.name for path in output_dir.iterdir())
    logger.info("%s", summary)
    if push_to_hub:
        logger.info("Pushed to %s", push_folder_to_hub(output_dir, push_to_hub, private))
    return model


__all__ = [
    "LAYOUTS",
    "ConversionSummary",
    "OutputDirError",
    "PushToHubError",
    "conversion_card",
    "convert_checkpoint",
    "convert_to_model",
    "convert_with_summary",
    "detect_layout",
    "expand_class_queries",
    "push_folder_to_hub",
]
