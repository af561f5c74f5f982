"""The model card (README.md) of an INTR folder, through `huggingface_hub`'s `ModelCard` / `ModelCardData`.

Minimal version written on the `train` branch against the agreed interface; the `convert` branch owns this module.
"""

from collections.abc import Mapping, Sequence

from huggingface_hub import ModelCard, ModelCardData


def intr_model_card(
    config,
    *,
    origin: str,
    details: Sequence[tuple[str, str]] = (),
    eval_results: Mapping[str, float] | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    repo_id: str | None = None,
) -> ModelCard:
    """
    The card of an INTR model with `config`: `origin` (a markdown paragraph on where the weights come from), a table of
    `details` rows (e.g. the recipe), `eval_results` (name -> value), how to load it (`repo_id`, else a placeholder
    path) with `trust_remote_code`, and its classes.
    """
    location = repo_id or "path/to/this/folder"
    labels = [config.id2label[index] for index in range(config.num_labels)]
    shown = ", ".join(f"`{label}`" for label in labels[:10]) + (f", ... ({len(labels)} in all)" if len(labels) > 10
                                                              else "")
    data = ModelCardData(library_name="transformers", pipeline_tag="image-classification",
                         tags=["intr", "interpretable", "image-classification", "custom_code"],
                         base_model=base_model, datasets=list(datasets) or None)
    sections = [f"---\n{data.to_yaml()}\n---", f"# INTR ({len(labels)} classes)", origin]
    if details:
        sections.append("## Details\n\n| | |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in details))
    sections.append(f"## Classes\n\n{len(labels)}: {shown}")
    if eval_results:
        sections.append("## Evaluation\n\n| metric | value |\n|---|---|\n" + "\n".join(
            f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |"
            for name, value in eval_results.items()))
    sections.append(
        "## How to load\n\n```python\nfrom transformers import AutoModelForImageClassification, pipeline\n\n"
        f'model = AutoModelForImageClassification.from_pretrained("{location}", trust_remote_code=True)\n'
        f'classifier = pipeline("image-classification", model="{location}", trust_remote_code=True)\n```'
    )
    return ModelCard("\n\n".join(sections) + "\n")
