"""Write the model card (README.md) of the digits INTR trained by `examples/train_digits.sh`, from the metrics
`run_finetune.py` saved next to the weights (`eval_results.json`, `train_results.json`).

    python examples/write_digits_card.py runs/intr-digits
"""

import argparse
import json
from pathlib import Path

from transformers import AutoModelForImageClassification

CARD = """---
library_name: transformers
pipeline_tag: image-classification
license: apache-2.0
tags:
- intr
- image-classification
- interpretability
- custom_code
model-index:
- name: intr-digits
  results:
  - task:
      type: image-classification
    dataset:
      name: scikit-learn digits on a 128x128 canvas (examples/make_digits_dataset.py, seed 0), val split
      type: imagefolder
    metrics:
    - type: accuracy
      name: acc@1
      value: {acc1}
    - type: top-5-accuracy
      name: acc@5
      value: {acc5}
---

# intr-digits: a small INTR trained from scratch on digits placed on a canvas

A tiny [INTR](https://arxiv.org/abs/2311.04157) (Interpretable Transformer, Paul et al., ICLR 2024) that classifies
handwritten digits pasted at a random position and scale on a noisy 128x128 canvas. It is the repository's default
model: small ({size_mb:.1f} MB), trained in minutes on a CPU by `run_finetune.py`, and its attention maps can be checked
against the digits' true bounding boxes.

INTR gives every class its own learned query; the decoder's cross-attention of query c over the 8x8 feature map
shows where the model looked for class c, and one shared presence head turns each query's output into that class's
logit.

## Evaluation

On the 359 validation canvases (each image counted once):

| metric | value |
|---|---|
| acc@1 | {acc1:.4f} |
| acc@5 | {acc5:.4f} |
| eval loss | {loss:.4f} |

## Data

`examples/make_digits_dataset.py` (seed 0) takes scikit-learn's 1797 handwritten 8x8 digits (installed with the
package), upscales each to a random size of 48-96 pixels and pastes it at a random position on a 128x128 canvas with a
random background level and noise; split 80/20 per class (1438 train / 359 val) in the reference image-folder layout,
with `metadata.jsonl` holding every digit's bounding box `[x0, y0, x1, y1]` (the tight box of its ink).

## Model and training

- Backbone: a basic-block ResNet with 3 stages of 1 block (widths 32/64/128, stride 16, so an 8x8 feature map on
  128x128 inputs); transformer: d_model 64, 4 heads, 2 encoder + 2 decoder layers, feed-forward 256, sine positions,
  no dropout; 10 class queries. {num_parameters:,} parameters.
- **Trained from scratch**: nothing is pretrained, so nothing is frozen (`frozen_backbone_stages=[]`) and the backbone
  learns at the same rate as the transformer. This departs from the reference recipe, which fine-tunes a DETR
  checkpoint with a frozen ResNet stem and first stage and a 10x smaller backbone learning rate.
- `run_finetune.py`: AdamW, learning rate 5e-4 (backbone and transformer), weight decay 1e-4, gradient clipping 0.1,
  batch 32, {epochs:g} epochs with the learning rate x0.1 after epoch 20, 128x128 fixed size, no flip (digits are not
  mirror-symmetric), seed 42; {runtime:.0f} s on 2 CPU cores.

Reproduce (dataset + training + this card): `bash examples/train_digits.sh data runs/intr-digits`.

## Use

```python
from transformers import pipeline

classifier = pipeline("image-classification", model="examples/intr-digits", trust_remote_code=True)
print(classifier("examples/sample_digit.png"))
```

Attention maps: call the model with `output_attentions=True` and pass the output to the image processor's
`post_process_attention_maps` (one map per head, for the predicted class or any class you ask for).

## Limitations

A demonstration model on a synthetic task: grayscale digits on plain or noisy backgrounds, always one digit per
canvas. It says nothing about natural images. Some digits (e.g. 1 and 7, 3 and 9) are ambiguous at 8x8 resolution.
"""


def write_card(output_dir: str | Path) -> Path:
    output_dir = Path(output_dir)
    evaluation = json.loads((output_dir / "eval_results.json").read_text())
    training = json.loads((output_dir / "train_results.json").read_text())
    size_mb = (output_dir / "model.safetensors").stat().st_size / 2**20
    model = AutoModelForImageClassification.from_pretrained(output_dir, trust_remote_code=True)
    card = CARD.format(
        acc1=evaluation["eval_acc@1"], acc5=evaluation["eval_acc@5"], loss=evaluation["eval_loss"], size_mb=size_mb,
        num_parameters=model.num_parameters(), epochs=training["epoch"], runtime=training["train_runtime"],
    )
    path = output_dir / "README.md"
    path.write_text(card, encoding="utf-8")
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="the folder run_finetune.py trained (with eval_results.json and "
                                          "train_results.json); its README.md is replaced")
    args = parser.parse_args(argv)
    if not (Path(args.model_dir) / "eval_results.json").is_file():
        parser.error(f"{args.model_dir} has no eval_results.json: train it with examples/train_digits.sh first.")
    print(write_card(args.model_dir))


if __name__ == "__main__":
    main()
