"""Outputs of the `intr-visualize` command: per image its pictures and `summary.json`; over all images and models
`localization.json` and `faithfulness.json` / `.png`. JSON is written atomically."""

import json

import numpy as np

from .hub_folder import write_text_atomically
from .localization import localization_scores, peak_location
from .pictures import draw_curves, draw_maps_panel, draw_single_map, draw_top_q_panel, overlay, save_picture


def _class_map(class_maps, head):
    """One class's resized map of `head` (an index), or its head average for None."""
    return class_maps["average_resized"] if head is None else class_maps["heads_resized"][head]


def _draw_pictures(folder, explanation, kind, box, args):
    """Overlays (each a titled picture with a colour scale) and panels of one image."""
    image = explanation["image"]
    title = f"{explanation['label']} ({explanation['score']:.2f})"
    if kind == "intr":
        layer, num_layers = explanation["layer"]
        title += f", decoder layer {layer + 1} of {num_layers}"
        shown = [m for m in explanation["maps"] if m["head"] is None or args.heads is None or m["head"] in args.heads]
    else:
        shown = explanation["maps"]
    overlays = {m["name"]: overlay(image, m["map"], box=box) for m in shown}
    for entry in shown:
        picture = draw_single_map(overlays[entry["name"]], entry["map"], f"{title}\n{entry['name']}")
        save_picture(picture, folder / f"{entry['file']}.png")
    panel_name = "heads_panel.png" if kind == "intr" else "panel.png"
    save_picture(draw_maps_panel(image, overlays, title), folder / panel_name)
    if kind == "intr" and explanation["top_q"]:
        rows = {
            f"{m['label']} ({m['score']:.2f})": {
                entry["name"]: overlays[entry["name"]] if c == explanation["class_id"]
                else overlay(image, _class_map(m, entry["head"]), box=box)
                for entry in shown
            }
            for c, m in explanation["top_q"]
        }
        save_picture(draw_top_q_panel(rows, f"top-{len(rows)} classes by logit x heads"), folder / "top_q_panel.png")


def _summary(item, explanation, kind, model_name):
    """`summary.json` content of one image: predictions, and per map its peak and (with a box) localization."""
    image, maps, box = explanation["image"], explanation["maps"], item["bbox"]
    scores = localization_scores({m["name"]: m["map"] for m in maps}, box) if box is not None else {}
    summary = {
        "image": str(item["path"]),
        "image_size": list(image.shape[:2]),
        "model": model_name,
        "kind": kind,
        "true_class": item["true_class"],
        "bbox": box,
        "predictions": explanation["predictions"],
        "explained_class": {k: explanation[k] for k in ("class_id", "label", "score")},
        "maps": [
            {
                "name": m["name"],
                "peak": list(peak_location(m["map"])),
                "peak_in_box": scores[m["name"]]["pointing_game"] if box is not None else None,
                "mass_in_box": scores[m["name"]]["mass_in_box"] if box is not None else None,
            }
            for m in maps
        ],
        "box_area_share": scores["random"]["mass_in_box"] if box is not None else None,
    }
    if kind == "intr":
        summary["layer"] = explanation["layer"][0]
        summary["top_q"] = [{"class_id": c, "label": m["label"], "score": m["score"]} for c, m in explanation["top_q"]]
    return summary


def write_image_outputs(folder, item, explanation, kind, model_name, args):
    """Write one image's pictures and `summary.json` into `folder` (created); return the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    if not args.no_pictures:
        _draw_pictures(folder, explanation, kind, item["bbox"], args)
    summary = _summary(item, explanation, kind, model_name)
    _write_json(folder / "summary.json", summary)
    return summary


def _write_json(path, content):
    write_text_atomically(path, json.dumps(content, indent=1))


def average_localization(summaries, prefix):
    """Mean pointing-game hit rate and mass in the box per map over the summaries with a box, plus the random floor."""
    boxed = [s for s in summaries if s["bbox"] is not None]
    if not boxed:
        return {}
    names = [m["name"] for m in boxed[0]["maps"]]
    scores = {
        f"{prefix}{name}": {
            "pointing_game": float(np.mean([s["maps"][i]["peak_in_box"] for s in boxed])),
            "mass_in_box": float(np.mean([s["maps"][i]["mass_in_box"] for s in boxed])),
        }
        for i, name in enumerate(names)
    }
    floor = float(np.mean([s["box_area_share"] for s in boxed]))
    scores[f"{prefix}random"] = {"pointing_game": floor, "mass_in_box": floor}
    return {"num_images": len(boxed), "scores": scores}


def write_totals(output_dir, items, localization, accuracy, faithfulness):
    """`localization.json` and `faithfulness.json` / `.png` over all images and models."""
    if localization:
        _write_json(output_dir / "localization.json", {
            "num_images": sum(i["bbox"] is not None for i in items), "accuracy": accuracy, "scores": localization,
            "random": "a uniformly random map: its expected score is the share of the image the box covers",
        })
    if faithfulness:
        _write_json(output_dir / "faithfulness.json", faithfulness)
        save_picture(draw_curves(faithfulness), output_dir / "faithfulness.png")
