"""INTR for the Hugging Face ecosystem.

`configuration_intr.py`, `modeling_intr.py` and `image_processing_intr.py` are the Hub code bundle (siblings that
`save_pretrained` copies next to the weights); the rest of the package (checkpoint loading, interpretation) builds on
them. Importing the package registers INTR with the transformers auto classes, in process and for `save_pretrained`.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .checkpoints import CheckpointError, load_reference_checkpoint, reference_state_dict_to_intr
from .configuration_intr import IntrConfig, resnet_backbone_config
from .image_processing_intr import IntrImageProcessor
from .interpret import (
    attention_rollout,
    evaluate_explanations,
    explain,
    gradient_rollout,
    localization_scores,
    mass_in_box,
    pointing_game,
)
from .modeling_intr import (
    IntrForImageClassification,
    IntrImageClassifierOutput,
    IntrModel,
    IntrModelOutput,
    IntrPreTrainedModel,
)

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
    "IntrConfig",
    "IntrForImageClassification",
    "IntrImageClassifierOutput",
    "IntrImageProcessor",
    "IntrModel",
    "IntrModelOutput",
    "IntrPreTrainedModel",
    "attention_rollout",
    "evaluate_explanations",
    "explain",
    "gradient_rollout",
    "load_reference_checkpoint",
    "localization_scores",
    "mass_in_box",
    "pointing_game",
    "reference_state_dict_to_intr",
    "resnet_backbone_config",
]
