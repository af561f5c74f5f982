"""Train the tiny ViT shipped as `examples/vit-digits`: the rollout baseline beside INTR in the README.

A transformers `ViTForImageClassification` (4 layers, width 96, 4 heads, 16x16 patches: an 8x8 patch grid on the
128x128 canvases) trained from scratch on the same "digits on a canvas" image folders as `examples/intr-digits`
(`examples/make_digits_dataset.py`), with random translations, on the CPU (about half an hour on 2 busy cores). It is saved with eager attention and its
`ViTImageProcessor`, so `python -m modeling_intr.visualize --model examples/vit-digits` draws attention rollout and
gradient rollout maps of a trained model.

    python examples/make_digits_dataset.py --output_dir data
    python examples/train_digits_vit.py --dataset_path data --output_dir examples/vit-digits
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from modeling_intr.image_folders import is_image_file, list_classes
from modeling_intr.image_processing_intr import to_rgb_array


def load_split(folder, processor):
    """All images of `folder/<class>/*` as processed pixel values `[n, 3, 128, 128]` and labels `[n]`; images are
    converted to RGB by INTR's processor rule, so both models see the same pixels."""
    classes = list_classes(folder)
    paths = [(path, label) for label, name in enumerate(classes)
             for path in sorted((folder / name).iterdir()) if is_image_file(path)]
    images = [to_rgb_array(path) for path, _ in paths]
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    return pixel_values, torch.tensor([label for _, label in paths]), classes


def random_shift(pixel_values, max_shift):
    """Augmentation: roll every image by its own random offset of up to `max_shift` pixels in each direction."""
    offsets = torch.randint(-max_shift, max_shift + 1, (len(pixel_values), 2))
    return torch.stack([image.roll(tuple(offset.tolist()), dims=(1, 2)) for image, offset in zip(pixel_values, offsets)])


@torch.no_grad()
def accuracy(model, pixel_values, labels, batch_size=256):
    model.eval()
    predictions = torch.cat([model(pixel_values=chunk).logits.argmax(-1) for chunk in pixel_values.split(batch_size)])
    return float((predictions == labels).float().mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_path", required=True, help="ROOT with ROOT/digits/{train,val}/<class>/<image>")
    parser.add_argument("--output_dir", default="examples/vit-digits", help="where the model and processor go")
    parser.add_argument("--epochs", type=int, default=40, help="passes over the training images")
    parser.add_argument("--batch_size", type=int, default=32, help="images per optimizer step")
    parser.add_argument("--learning_rate", type=float, default=5e-4, help="peak of the one-cycle schedule")
    parser.add_argument("--max_shift", type=int, default=24, help="random translation (pixels, wrapping around)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialization, order and shifts")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    processor = ViTImageProcessor(size={"height": 128, "width": 128})
    root = Path(args.dataset_path) / "digits"
    train_pixels, train_labels, classes = load_split(root / "train", processor)
    val_pixels, val_labels, _ = load_split(root / "val", processor)
    config = ViTConfig(
        image_size=128, patch_size=16, hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=192, id2label=dict(enumerate(classes)),
        attn_implementation="eager",
    )
    model = ViTForImageClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.05)
    steps_per_epoch = int(np.ceil(len(train_labels) / args.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.learning_rate, total_steps=args.epochs * steps_per_epoch, pct_start=0.05
    )
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_labels))
        for batch in order.split(args.batch_size):
            pixel_values = random_shift(train_pixels[batch], args.max_shift)
            loss = model(pixel_values=pixel_values, labels=train_labels[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        if (epoch + 1) % 5 == 0 or epoch + 1 == args.epochs:
            print(f"epoch {epoch + 1}: loss {loss.item():.3f}, val accuracy {accuracy(model, val_pixels, val_labels):.3f}")
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    print(f"saved to {args.output_dir}: val accuracy {accuracy(model, val_pixels, val_labels):.3f}")


if __name__ == "__main__":
    main()
