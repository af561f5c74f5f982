"""INTR model configuration.

Every hyper-parameter of the reference implementation (Paul et al., "A Simple Interpretable Transformer for
Fine-Grained Image Classification and Analysis", ICLR 2024) with the reference defaults. The number of classes is
`num_labels` (one learned query per class); the backbone is a transformers `ResNetConfig` (ResNet-50 by default).
"""

from transformers import AutoConfig, PreTrainedConfig, ResNetConfig

_RESNET_PRESETS = {
    # name: (layer_type, depths, hidden_sizes), the torchvision ResNets the reference can use
    "resnet18": ("basic", [2, 2, 2, 2], [64, 128, 256, 512]),
    "resnet34": ("basic", [3, 4, 6, 3], [64, 128, 256, 512]),
    "resnet50": ("bottleneck", [3, 4, 6, 3], [256, 512, 1024, 2048]),
    "resnet101": ("bottleneck", [3, 4, 23, 3], [256, 512, 1024, 2048]),
}


def resnet_name(layer_type: str, depths) -> str | None:
    """The torchvision name (`"resnet50"`, ...) of a ResNet with these block type and depths; None if none matches."""
    for name, (preset_type, preset_depths, _) in _RESNET_PRESETS.items():
        if (preset_type, preset_depths) == (layer_type, list(depths)):
            return name
    return None


def resnet_backbone_config(name: str = "resnet50", out_feature: str = "stage4") -> ResNetConfig:
    """A transformers `ResNetConfig` laid out like torchvision's `name` (resnet18/34/50/101), returning `out_feature`."""
    if name not in _RESNET_PRESETS:
        raise ValueError(f"Unknown ResNet {name!r}: choose one of {sorted(_RESNET_PRESETS)}.")
    layer_type, depths, hidden_sizes = _RESNET_PRESETS[name]
    return ResNetConfig(
        layer_type=layer_type,
        depths=depths,
        hidden_sizes=hidden_sizes,
        embedding_size=64,
        downsample_in_first_stage=False,
        downsample_in_bottleneck=False,
        out_features=[out_feature],
    )


class IntrConfig(PreTrainedConfig):
    r"""
    Configuration of an INTR model ([`IntrModel`], [`IntrForImageClassification`]).

    Args:
        backbone_config (`PreTrainedConfig` or `dict`, *optional*):
            Config of the convolutional backbone, loaded with `transformers.load_backbone`. Defaults to a torchvision-
            style ResNet-50 (`resnet_backbone_config("resnet50")`). It must return exactly one feature map
            (`out_features`, `"stage4"` in the reference).
        dilation (`bool`, *optional*, defaults to `False`):
            DC5: replace the stride of the last backbone stage by dilation, as torchvision's
            `replace_stride_with_dilation=[False, False, True]` (first block of the stage keeps dilation 1, the
            following blocks use 2). Bottleneck ResNets only.
        frozen_backbone_stages (`list[str]`, *optional*, defaults to `["stem", "stage1"]`):
            Backbone stages (names from `backbone_config.stage_names`) whose parameters are frozen. The reference
            trains stages 2-4 only. BatchNorm statistics and affine parameters are always frozen.
        position_embedding_type (`str`, *optional*, defaults to `"sine"`):
            `"sine"` (normalized over the real region, scale 2*pi, temperature 10000) or `"learned"` (50x50
            row/column tables).
        d_model (`int`, *optional*, defaults to 256): width of the transformer.
        num_attention_heads (`int`, *optional*, defaults to 8): heads of every attention layer.
        encoder_layers (`int`, *optional*, defaults to 6): number of encoder layers.
        decoder_layers (`int`, *optional*, defaults to 6): number of decoder layers.
        ffn_dim (`int`, *optional*, defaults to 2048): width of the feed-forward blocks.
        dropout (`float`, *optional*, defaults to 0.1): dropout on residual branches and inside the feed-forward.
        attention_dropout (`float`, *optional*, defaults to 0.1): dropout on attention weights.
        activation_function (`str`, *optional*, defaults to `"relu"`): feed-forward activation.
        pre_norm (`bool`, *optional*, defaults to `False`): pre-LayerNorm layers (and a final encoder LayerNorm).
        batch_invariant (`bool`, *optional*, defaults to `False`):
            Run each image of a padded batch through the backbone on its own unpadded region, so an image's result
            does not depend on what it was batched with. `False` reproduces the reference, whose padded batch runs
            through the backbone as one tensor (the padding then leaks into features near the image's edge).
            Unpadded batches (fixed-size mode, batch of one) are identical either way.
        num_labels (`int`): number of classes = number of class queries, at least 2; set with `id2label` /
            `label2id`. INTR is a classifier (one query per class, each scored by the presence head), so transformers'
            `num_labels=1` regression convention does not apply: `problem_type` is single- or multi-label
            classification.
        attn_implementation (`str`, *optional*): `"sdpa"` (default) or `"eager"`, the only two INTR supports.

    Example:
    ```python
    >>> from modeling_intr import IntrConfig, IntrForImageClassification, resnet_backbone_config
    >>> config = IntrConfig(backbone_config=resnet_backbone_config("resnet18"), num_labels=200)
    >>> model = IntrForImageClassification(config)
    ```
    """

    model_type = "intr"
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "encoder_layers"}
    # Trainer: only `logits` is gathered at evaluation, not the encoder output or the feature mask.
    keys_to_ignore_at_inference = ["last_hidden_state", "encoder_last_hidden_state", "feature_mask"]
    supported_attention_implementations = ("eager", "sdpa")
    supported_problem_types = ("single_label_classification", "multi_label_classification")

    backbone_config: dict | PreTrainedConfig | None = None
    dilation: bool = False
    frozen_backbone_stages: list[str] | tuple[str, ...] = ("stem", "stage1")
    position_embedding_type: str = "sine"
    d_model: int = 256
    num_attention_heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    ffn_dim: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_function: str = "relu"
    pre_norm: bool = False
    batch_invariant: bool = False
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs):
        if self.backbone_config is None:
            self.backbone_config = resnet_backbone_config("resnet50")
        elif isinstance(self.backbone_config, dict):
            backbone_config = dict(self.backbone_config)
            model_type = backbone_config.pop("model_type", "resnet")
            self.backbone_config = AutoConfig.for_model(model_type, **backbone_config)
        self.frozen_backbone_stages = list(self.frozen_backbone_stages)
        super().__post_init__(**kwargs)
        self._check_arguments()

    def _check_arguments(self):
        if self.d_model % self.num_attention_heads != 0:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_attention_heads ({self.num_attention_heads})."
            )
        if self.num_labels is None or self.num_labels < 2:
            raise ValueError(
                f"num_labels must be >= 2, got {self.num_labels}: INTR is a classifier (one query per class, each "
                "scored by the presence head) and classification needs at least two classes."
            )
        if self.problem_type is not None and self.problem_type not in self.supported_problem_types:
            raise ValueError(
                f"problem_type {self.problem_type!r} is not supported: INTR is a classifier, use one of "
                f"{list(self.supported_problem_types)}."
            )
        if self.position_embedding_type not in ("sine", "learned"):
            raise ValueError(
                f"Unknown position_embedding_type {self.position_embedding_type!r}: use 'sine' or 'learned'."
            )
        if self.position_embedding_type == "sine" and self.d_model % 4 != 0:
            raise ValueError(f"The sine position embedding needs d_model divisible by 4, got {self.d_model}.")
        if self.encoder_layers < 1 or self.decoder_layers < 1:
            raise ValueError("encoder_layers and decoder_layers must be >= 1.")
        out_features = getattr(self.backbone_config, "out_features", None)
        if not out_features or len(out_features) != 1:
            raise ValueError(
                f"backbone_config must return exactly one feature map (out_features), got {out_features}."
            )
        stage_names = getattr(self.backbone_config, "stage_names", [])
        unknown = [name for name in self.frozen_backbone_stages if name not in stage_names]
        if unknown:
            raise ValueError(f"frozen_backbone_stages {unknown} are not backbone stages; choose from {stage_names}.")
        is_resnet = self.backbone_config.model_type == "resnet"
        if self.frozen_backbone_stages and not is_resnet:
            raise ValueError("frozen_backbone_stages is supported for ResNet backbones only; pass [] for others.")
        if self.dilation and not (is_resnet and self.backbone_config.layer_type == "bottleneck"):
            raise ValueError(
                "dilation (DC5) needs a bottleneck ResNet (ResNet-50/101), as in torchvision; "
                "basic-block ResNets (ResNet-18/34) do not support it."
            )

    @classmethod
    def check_attention_implementation(cls, attn_implementation) -> None:
        """ValueError unless `attn_implementation` is None (the default, sdpa) or one INTR supports."""
        requested = attn_implementation.get("") if isinstance(attn_implementation, dict) else attn_implementation
        if requested is not None and requested not in cls.supported_attention_implementations:
            raise ValueError(
                f"INTR does not support attn_implementation={requested!r}: use one of "
                f"{list(cls.supported_attention_implementations)} (its padded-image attention mask is an additive "
                "key mask that other kernels do not take)."
            )

    @property
    def _attn_implementation(self):
        return self._attn_implementation_internal

    @_attn_implementation.setter
    def _attn_implementation(self, value):
        # checked here so `IntrConfig(attn_implementation=...)` and every later assignment refuse unsupported kernels
        self.check_attention_implementation(value)
        PreTrainedConfig._attn_implementation.fset(self, value)


__all__ = ["IntrConfig", "resnet_backbone_config", "resnet_name"]
