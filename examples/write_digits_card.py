"""Write the model card (README.md) of the digits INTR trained by `examples/train_digits.sh`: the package's INTR card
(`modeling_intr.model_card.intr_model_card`) with what this example is, its data and recipe, and the metrics
`run_finetune.py` saved next to the weights (`eval_results.json`, `train_results.json`).

    python examples/write_digits_card.py runs/intr-digits
"""

import argparse
import json
from pathlib import Path

from modeling_intr import IntrConfig, intr_model_card
from modeling_intr.hub_folder import write_text_atomically

ORIGIN = """\
**intr-digits** is a tiny INTR trained from scratch to classify handwritten digits pasted at a random position and
scale on a noisy 128x128 canvas. It is the repository's default model: small ({size_mb:.1f} MB), trained in minutes
on a CPU by `run_finetune.py`, and its attention maps can be checked against the digits' true bounding boxes.

**Data.** `examples/make_digits_dataset.py` (seed 0) takes scikit-learn's 1797 handwritten 8x8 digits (installed with
the package), upscales each to a random size of 48-96 pixels and pastes it at a random position on a 128x128 canvas
with a random background level and noise; split 80/20 per class (1438 train / 359 val) in the reference image-folder
layout, with `metadata.jsonl` holding every digit's bounding box `[x0, y0, x1, y1]` (the tight box of its ink).

**Trained from scratch**: nothing is pretrained, so nothing is frozen (`frozen_backbone_stages=[]`) and the backbone
learns at the same rate as the transformer. This departs from the reference recipe, which fine-tunes a DETR checkpoint
with a frozen ResNet stem and first stage and a 10x smaller backbone learning rate. Reproduce (dataset, training and
this card): `bash examples/train_digits.sh data runs/intr-digits`.

**Limitations.** A demonstration model on a synthetic task: grayscale digits on plain or noisy backgrounds, always one
digit per canvas. It says nothing about natural images. Some digits (e.g. 1 and 7, 3 and 9) are ambiguous at 8x8
resolution."""


def digits_card(model_dir: Path) -> str:
    """The card text of the digits model in `model_dir` (its config, weights and saved metrics)."""
    evaluation = json.loads((model_dir / "eval_results.json").read_text())
    training = json.loads((model_dir / "train_results.json").read_text())
    size_mb = (model_dir / "model.safetensors").stat().st_size / 2**20
    details = [  # the recipe of examples/train_digits.sh
        ("Script", "`examples/train_digits.sh` (`run_finetune.py`, transformers `Trainer`)"),
        ("Optimizer", "AdamW, learning rate 5e-4 (backbone and transformer), weight decay 1e-4"),
        ("Schedule", "StepLR: learning rates x0.1 after epoch 20"),
        ("Length", f"{training['epoch']:g} epochs, {training['train_runtime']:.0f} s on 2 CPU cores"),
        ("Batch", "32"),
        ("Gradient clipping", "0.1"),
        ("Augmentation", "resize to 128x128, no flip (digits are not mirror-symmetric)"),
        ("Frozen backbone stages", "none"),
        ("Precision", "float32"),
        ("Seed", "42"),
    ]
    eval_results = {"acc@1": evaluation["eval_acc@1"], "acc@5": evaluation["eval_acc@5"],
                    "loss": evaluation["eval_loss"], "images evaluated": evaluation["eval_num_images"]}
    card = intr_model_card(IntrConfig.from_pretrained(model_dir), origin=ORIGIN.format(size_mb=size_mb),
                           details=details, eval_results=eval_results, repo_id="examples/intr-digits")
    return str(card)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="the folder run_finetune.py trained (with eval_results.json and "
                                          "train_results.json); its README.md is replaced")
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir)
    if not (model_dir / "eval_results.json").is_file():
        parser.error(f"{model_dir} has no eval_results.json: train it with examples/train_digits.sh first.")
    path = model_dir / "README.md"
    write_text_atomically(path, digits_card(model_dir))
    print(path)


if __name__ == "__main__":
    main()
