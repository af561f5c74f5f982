"""Explaining the images of the `intr-visualize` command in batches: INTR's per-head maps (`explain`) or a ViT's
rollouts, one uniform record per image; an image that cannot be read or explained is reported, not fatal."""

import torch
from tqdm.auto import tqdm

from .image_processing_intr import resize_maps
from .interpret import explain, top_predictions
from .visualize_inputs import read_image
from .vit_rollout import attention_rollout, gradient_rollout


def _map_entry(name, head, resized, coarse):
    """One explained map: display `name`, file stem, `head` index (None: average or a rollout), resized and coarse."""
    return {"name": name, "file": name.replace(" ", "_"), "head": head, "map": resized, "coarse": coarse}


def _explain_intr(model, processor, images, class_ids, args):
    """INTR: per image, the maps of every head and of the head average (original size and feature grid)."""
    results = explain(model, processor, images, class_ids, top_q=args.top_q, layer=args.layer)
    num_layers = model.config.decoder_layers
    explained = []
    for result in results:
        (class_id,) = result["class_ids"]
        maps = result["maps"][class_id]
        entries = [_map_entry(f"head {k}", k, resized, coarse)
                   for k, (resized, coarse) in enumerate(zip(maps["heads_resized"], maps["heads"]))]
        entries.append(_map_entry("head average", None, maps["average_resized"], maps["average"]))
        explained.append({
            "image": result["image"],
            "predictions": result["predictions"],
            "class_id": class_id,
            "label": maps["label"],
            "score": maps["score"],
            "maps": entries,
            "top_q": [(c, result["maps"][c]) for c in result["similar_class_ids"]],
            "layer": (args.layer % num_layers, num_layers),  # (0-based index, number of decoder layers)
        })
    return explained


def _explain_vit(model, processor, images, class_ids, args):
    """ViT family: per image, attention rollout and gradient rollout (original size and patch grid)."""
    pixel_values = processor(images, return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits.float().cpu()
    targets = [int(logits[i].argmax()) if c is None else c for i, c in enumerate(class_ids)]
    rollouts = {
        "attention rollout": attention_rollout(model, pixel_values, args.head_fusion, args.discard_ratio),
        "gradient rollout": gradient_rollout(model, pixel_values, targets, args.discard_ratio),
    }
    explained = []
    for index, (image, class_id) in enumerate(zip(images, targets)):
        explained.append({
            "image": image,
            "predictions": top_predictions(logits[index], model.config.id2label),
            "class_id": class_id,
            "label": str(model.config.id2label.get(class_id, class_id)),
            "score": float(logits[index].softmax(-1)[class_id]),
            "maps": [_map_entry(name, None, resize_maps(maps[index], image.shape[:2]), maps[index])
                     for name, maps in rollouts.items()],
        })
    return explained


def explain_batch(kind, model, processor, images, class_ids, args):
    """Explanations of a batch of RGB images, one dict per image (`image`, `predictions`, `class_id`, `label`,
    `score`, `maps`: a list of `_map_entry`, and for INTR `top_q` and `layer`)."""
    explain_fn = _explain_intr if kind == "intr" else _explain_vit
    return explain_fn(model, processor, images, class_ids, args)


def explain_items(model, processor, kind, items, args, name):
    """
    Explain `items` in batches. Yields `(item, explanation)` for every image that could be read and explained and
    `(item, reason)` (a string) for every other one, which is skipped.
    """
    with tqdm(total=len(items), unit="image", desc=name) as progress:
        for start in range(0, len(items), args.batch_size):
            batch, images = [], []
            for item in items[start : start + args.batch_size]:
                try:
                    images.append(read_image(item))
                    batch.append(item)
                except (ValueError, OSError) as error:
                    yield item, str(error)
            wanted = [args.class_index] * len(batch)
            try:
                explanations = explain_batch(kind, model, processor, images, wanted, args) if batch else []
            except ValueError:  # an image the processor refuses (e.g. too thin to resize): find it, keep the rest
                explanations = []
                for item, image, class_id in zip(batch, images, wanted):
                    try:
                        explanations += explain_batch(kind, model, processor, [image], [class_id], args)
                    except ValueError as error:
                        yield item, str(error).removeprefix("Image 0: ")
                        explanations.append(None)
            for item, explanation in zip(batch, explanations):
                if explanation is not None:
                    yield item, explanation
            progress.update(len(items[start : start + args.batch_size]))
