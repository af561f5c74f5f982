"""INTR for the Hugging Face ecosystem.

`configuration_intr.py`, `modeling_intr.py` and `image_processing_intr.py` are the Hub code bundle (siblings that
`save_pretrained` copies next to the weights); the rest of the package builds on them: checkpoint conversion
(`checkpoint_io` -> `checkpoint_layouts` -> `checkpoint_config` -> `checkpoints`; the folder: `convert`, `hub_folder`,
`model_card`), datasets (`data`, `image_folders`), explanations (`interpret`, `vit_rollout`, `faithfulness`,
`localization`) and their pictures and command line (`pictures`; `visualize` over `visualize_inputs`,
`visualize_batches`, `visualize_outputs`). Importing the package registers INTR with the transformers auto classes,
in process and for `save_pretrained`. Command lines name a missing optional dependency's pip command through
`extras.optional_dependencies`.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .checkpoint_io import CheckpointError, NotACheckpointError, UnsafeCheckpointError
from .checkpoint_config import MissingConfigValueError
from .checkpoints import (
    Conversion,
    ConversionSummary,
    LabelsError,
    convert_to_model,
    convert_with_summary,
    load_reference_checkpoint,
)
from .configuration_intr import IntrConfig, resnet_backbone_config
from .faithfulness import evaluate_explanations
from .image_processing_intr import IntrImageProcessor
from .interpret import explain
from .localization import localization_scores, mass_in_box, pointing_game
from .model_card import intr_model_card
from .modeling_intr import (
    IntrForImageClassification,
    IntrImageClassifierOutput,
    IntrModel,
    IntrModelOutput,
    IntrPreTrainedModel,
)
from .vit_rollout import attention_rollout, gradient_rollout

AutoConfig.register(IntrConfig.model_type, IntrConfig, exist_ok=True)
AutoModel.register(IntrConfig, IntrModel, exist_ok=True)
AutoModelForImageClassification.register(IntrConfig, IntrForImageClassification, exist_ok=True)
AutoImageProcessor.register(IntrConfig, image_processor_classes={"pil": IntrImageProcessor}, exist_ok=True)

IntrConfig.register_for_auto_class()
IntrModel.register_for_auto_class("AutoModel")
IntrForImageClassification.register_for_auto_class("AutoModelForImageClassification")
IntrImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "CheckpointError",
    "Conversion",
    "ConversionSummary",
    "IntrConfig",
    "IntrForImageClassification",
    "IntrImageClassifierOutput",
    "IntrImageProcessor",
    "IntrModel",
    "IntrModelOutput",
    "IntrPreTrainedModel",
    "LabelsError",
    "MissingConfigValueError",
    "NotACheckpointError",
    "UnsafeCheckpointError",
    "attention_rollout",
    "convert_to_model",
    "convert_with_summary",
    "evaluate_explanations",
    "explain",
    "gradient_rollout",
    "intr_model_card",
    "load_reference_checkpoint",
    "localization_scores",
    "mass_in_box",
    "pointing_game",
    "resnet_backbone_config",
]
