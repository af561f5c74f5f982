"""The model card (README.md) of an INTR folder, written by the converter and by `run_finetune.py`.

`intr_model_card` builds a `huggingface_hub.ModelCard` from the model's config and what the caller knows (where the
weights come from, a details table, eval results); it renders offline (no Hub call).
"""

from collections.abc import Mapping, Sequence

from huggingface_hub import ModelCard, ModelCardData

from .configuration_intr import resnet_name

LISTED_CLASSES = 20  # longer class lists go into a collapsed <details> block
INTR_BIBTEX = """@inproceedings{paul2024simple,
  title     = {A Simple Interpretable Transformer for Fine-Grained Image Classification and Analysis},
  author    = {Paul, Dipanjyoti and Chowdhury, Arpita and Xiong, Xinqi and Chang, Feng-Ju and Carlyn, David and
               Stevens, Samuel and Provost, Kaiya and Karpatne, Anuj and Carstens, Bryan and Rubenstein, Daniel
               and Stewart, Charles and Berger-Wolf, Tanya and Su, Yu and Chao, Wei-Lun},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2024}
}"""
DETR_BIBTEX = """@inproceedings{carion2020end,
  title     = {End-to-End Object Detection with Transformers},
  author    = {Carion, Nicolas and Massa, Francisco and Synnaeve, Gabriel and Usunier, Nicolas and Kirillov,
               Alexander and Zagoruyko, Sergey},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2020}
}"""


def backbone_title(config) -> str:
    """`ResNet-50`, `ResNet-101 (DC5)`, ... for an `IntrConfig`; the block type and depths for other ResNets."""
    backbone = config.backbone_config
    name = resnet_name(backbone.layer_type, backbone.depths)
    title = f"ResNet-{name[len('resnet'):]}" if name else f"ResNet ({backbone.layer_type}, depths {backbone.depths})"
    return title + (" (DC5)" if getattr(config, "dilation", False) else "")


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else _cell(value)


def _classes_section(labels: list[str]) -> str:
    names = ", ".join(f"`{label}`" for label in labels)
    if len(labels) <= LISTED_CLASSES:
        return f"{len(labels)} classes, index 0 first: {names}."
    return (f"{len(labels)} classes, index 0 first.\n\n<details>\n<summary>All {len(labels)} class names</summary>\n\n"
            f"{names}\n\n</details>")


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
    The model card of an INTR model with this `IntrConfig`.

    Args:
        config: the model's `IntrConfig` (classes, backbone and transformer sizes are read from it).
        origin: a markdown paragraph saying where the weights come from.
        details: `(name, value)` rows of a table (recipe, source checksum, ...).
        eval_results: metric name -> value, shown as a table.
        base_model: the Hub id the weights were fine-tuned or converted from (card metadata).
        datasets: Hub ids of the training datasets (card metadata).
        repo_id: the Hub repo id, or the folder path, used in the loading snippet (default `path/to/model`).
    """
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["intr", "interpretability", "custom_code"],
        base_model=base_model,
        datasets=list(datasets) or None,
        license="apache-2.0",
    )
    location = repo_id or "path/to/model"
    labels = [config.id2label[index] for index in range(config.num_labels)]
    backbone = backbone_title(config)
    sections = [
        f"# INTR ({backbone}, {len(labels)} classes)",
        "INTR, the Interpretable Transformer (Paul et al., ICLR 2024): DETR re-purposed for classification with one "
        "learned query per class and a shared presence head; each class query's cross-attention shows where it found "
        "its class.",
        origin.strip(),
        "## How to load\n\n```python\nfrom transformers import AutoModelForImageClassification, pipeline\n\n"
        f'model = AutoModelForImageClassification.from_pretrained("{location}", trust_remote_code=True)\n'
        f'classifier = pipeline("image-classification", model="{location}", trust_remote_code=True)\n'
        'print(classifier("bird.jpg", top_k=5))\n```\n\n'
        "Pass `output_attentions=True` to the model to get the decoder cross-attentions (one map per class query "
        "and head): the explanation of each class's logit.",
        "## Model\n\n"
        f"- Backbone: {backbone}\n"
        f"- Transformer: d_model {config.d_model}, {config.num_attention_heads} heads, {config.encoder_layers} "
        f"encoder + {config.decoder_layers} decoder layers, FFN {config.ffn_dim}, "
        f"{'pre' if config.pre_norm else 'post'}-norm, {config.position_embedding_type} position embedding\n"
        f"- Classes: {_classes_section(labels)}",
    ]
    if details:
        rows = "\n".join(f"| {_cell(name)} | {_cell(value)} |" for name, value in details)
        sections.append(f"## Details\n\n| | |\n|---|---|\n{rows}")
    if eval_results:
        rows = "\n".join(f"| {_cell(metric)} | {_number(value)} |" for metric, value in eval_results.items())
        sections.append(f"## Evaluation results\n\n| metric | value |\n|---|---|\n{rows}")
    sections.append(f"## Citation\n\n```bibtex\n{INTR_BIBTEX}\n\n{DETR_BIBTEX}\n```")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
