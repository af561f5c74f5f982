"""INTR's own explanation: the logit of class c comes from class query c alone, so the decoder cross-attention of
query c (per head, and averaged over heads) shows where the model looked for class c.

- [`explain`]: per image, the top predictions and the maps of the requested and the top-q most similar classes.
- [`top_predictions`], [`similar_classes`]: the classes listed and explained.

The ViT baselines are in `modeling_intr.vit_rollout`, deletion/insertion faithfulness in `modeling_intr.faithfulness`,
box localization scores in `modeling_intr.localization`, pictures and the command line in `modeling_intr.visualize`.
"""

import torch

from .image_processing_intr import at_least_float32, per_image_class_ids, resize_maps


def top_predictions(logits, id2label, top_k=5):
    """
    The `top_k` classes of one image by probability (softmax of the logits).

    Args:
        logits (`torch.Tensor` of shape `(num_labels,)`): one image's logits.
        id2label (`dict[int, str]`): class names (`model.config.id2label`).
        top_k (`int`): number of classes (capped at `num_labels`).

    Returns:
        `list[dict]` with `class_id`, `label`, `score` (probability) and `logit`, best first.
    """
    probabilities = logits.float().softmax(-1)
    scores, indices = probabilities.topk(min(top_k, logits.shape[-1]))
    return [
        {"class_id": int(c), "label": _label(id2label, c), "score": float(s), "logit": float(logits[c])}
        for s, c in zip(scores, indices)
    ]


def _label(id2label, class_id):
    return str(id2label.get(int(class_id), int(class_id)))


def similar_classes(logits, requested, top_q):
    """
    The `top_q` classes with the highest logits, as the reference visualization picks them: a requested class (e.g.
    the true class) missing from the list replaces the lowest-ranked class that was not requested.

    Args:
        logits (`torch.Tensor` of shape `(num_labels,)`): one image's logits.
        requested (`list[int]`): classes that must be in the list.
        top_q (`int`): length of the list (`0` for none).

    Returns:
        `list[int]` ordered by logit, forced classes in the places they took.
    """
    if top_q <= 0:
        return []
    similar = logits.topk(min(top_q, logits.shape[-1])).indices.tolist()
    for class_id in requested:
        if class_id not in similar:
            replaceable = [index for index, c in enumerate(similar) if c not in requested]
            if replaceable:
                similar[replaceable[-1]] = class_id
            else:
                similar.append(class_id)
    return similar


@torch.no_grad()
def explain(model, processor, images, class_ids=None, top_q=5, layer=-1, top_k=5):
    """
    Explain INTR's predictions: per image, its top classes and, for the requested and the most similar classes, the
    decoder cross-attention map of every head and of the head average. A list of images of different sizes is one
    padded forward pass.

    Args:
        model ([`IntrForImageClassification`]): the model (its device is used).
        processor ([`IntrImageProcessor`]): its image processor.
        images: one image or a list (PIL, NumPy, torch, path; anything the processor accepts).
        class_ids (`int` or `list`, *optional*): classes to explain: one int for all images, or per image an int, a
            list of ints (e.g. the true class) or None. Defaults to (None:) the predicted class of each image.
        top_q (`int`, *optional*, defaults to 5): also explain the `top_q` classes with the highest logits (a
            requested class missing from them takes the last place, as in the reference); `0` for none.
        layer (`int`, *optional*, defaults to -1): decoder layer whose cross-attention is used.
        top_k (`int`, *optional*, defaults to 5): number of predictions listed.

    Returns:
        `list[dict]`, one per image, with:
            - `image` (`np.ndarray` `(height, width, 3)` `uint8`): the original image in RGB.
            - `predictions` (`list[dict]`): see [`top_predictions`].
            - `class_ids` (`list[int]`): the requested classes; `similar_class_ids` (`list[int]`): the top-q classes.
            - `maps` (`dict[int, dict]`), for every requested and similar class: `label`, `score` (probability),
              `logit`, `heads` `(num_heads, h, w)` and `average` `(h, w)` over the real (unpadded) feature region,
              `heads_resized` `(num_heads, height, width)` and `average_resized` `(height, width)` at the original
              image size: CPU tensors, float32 (float64 for a float64 model; a bfloat16 or float16 model works too).
    """
    rgb = processor.load_images(images)  # [3, H, W] uint8 each
    inputs = processor(rgb, input_data_format="channels_first", return_tensors="pt").to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)  # a bfloat16/float16-loaded model
    outputs = model(**inputs, output_attentions=True)
    logits = at_least_float32(outputs.logits).cpu()  # float32 maps and scores from a bfloat16 model
    id2label = model.config.id2label

    explained_per_image, requested_per_image, similar_per_image = [], [], []
    for index, requested in enumerate(per_image_class_ids(class_ids, logits)):  # count and range checked
        requested = (requested if isinstance(requested, list) else [requested]) or [int(logits[index].argmax())]
        similar = similar_classes(logits[index], requested, top_q)
        requested_per_image.append(requested)
        similar_per_image.append(similar)
        explained_per_image.append(list(dict.fromkeys(requested + similar)))
    # per image: (num_explained, num_heads, h, w) float32 over the real feature region
    per_image_maps = processor.post_process_attention_maps(outputs, class_ids=explained_per_image, layer=layer)

    results = []
    for index, explained in enumerate(explained_per_image):
        heads = per_image_maps[index]["attention_maps"].cpu()
        size = rgb[index].shape[-2:]
        probabilities = logits[index].softmax(-1)
        maps = {
            c: {
                "label": _label(id2label, c),
                "score": float(probabilities[c]),
                "logit": float(logits[index, c]),
                "heads": heads[n],
                "average": heads[n].mean(0),
                "heads_resized": resize_maps(heads[n], size),
                "average_resized": resize_maps(heads[n].mean(0), size),
            }
            for n, c in enumerate(explained)
        }
        results.append(
            {
                "image": rgb[index].transpose(1, 2, 0),
                "predictions": top_predictions(logits[index], id2label, top_k),
                "class_ids": requested_per_image[index],
                "similar_class_ids": similar_per_image[index],
                "maps": maps,
            }
        )
    return results
