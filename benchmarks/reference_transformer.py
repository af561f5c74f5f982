"""The reference's transformer part (DETR code as INTR runs it), rebuilt with our weights for A/B timing.

Same work as the reference: `torch.nn.MultiheadAttention` with its packed `in_proj`, sequence-first tensors
(`[h*w, b, d]`, the input permuted as DETR does), post-norm layers, the key padding mask always passed, the decoder's
shared final LayerNorm on every layer's output, and every decoder cross-attention computed twice (once for the output,
once more for the head-averaged weights INTR returns). Like the reference, every other attention call keeps
`nn.MultiheadAttention`'s default `need_weights=True` (weights computed and dropped); `need_weights=False` makes those
calls skip them (a leaner reference, for an equal-work comparison). `ReferenceTransformer(model)` takes an
`IntrModel`'s encoder/decoder weights, so its output can be checked equal to ours before it is timed.
"""

import torch
from torch import nn


def _packed_attention(attention) -> nn.MultiheadAttention:
    """nn.MultiheadAttention holding an IntrAttention's q/k/v (packed in_proj) and o projections."""
    d_model = attention.q_proj.in_features
    packed = nn.MultiheadAttention(d_model, attention.num_heads)
    with torch.no_grad():
        packed.in_proj_weight.copy_(torch.cat([attention.q_proj.weight, attention.k_proj.weight,
                                               attention.v_proj.weight]))
        packed.in_proj_bias.copy_(torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias]))
        packed.out_proj.load_state_dict(attention.o_proj.state_dict())
    return packed


class ReferenceEncoderLayer(nn.Module):
    need_weights = True  # nn.MultiheadAttention's default, which the reference keeps

    def __init__(self, layer):
        super().__init__()
        self.self_attn = _packed_attention(layer.self_attn)
        self.linear1, self.linear2 = layer.mlp.fc1, layer.mlp.fc2
        self.norm1, self.norm2 = layer.self_attn_layer_norm, layer.final_layer_norm

    def forward(self, src, pos, key_padding_mask):
        q = k = src + pos
        src = self.norm1(src + self.self_attn(q, k, value=src, key_padding_mask=key_padding_mask,
                                                need_weights=self.need_weights)[0])
        return self.norm2(src + self.linear2(torch.relu(self.linear1(src))))


class ReferenceDecoderLayer(nn.Module):
    need_weights = True

    def __init__(self, layer):
        super().__init__()
        self.self_attn = _packed_attention(layer.self_attn)
        self.multihead_attn = _packed_attention(layer.cross_attn)
        self.linear1, self.linear2 = layer.mlp.fc1, layer.mlp.fc2
        self.norm1, self.norm2 = layer.self_attn_layer_norm, layer.cross_attn_layer_norm
        self.norm3 = layer.final_layer_norm

    def forward(self, tgt, memory, query_pos, key_padding_mask):
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, k, value=tgt, need_weights=self.need_weights)[0])
        query = tgt + query_pos
        attended = self.multihead_attn(query, memory, value=memory, key_padding_mask=key_padding_mask,
                                       need_weights=self.need_weights)[0]
        weights = self.multihead_attn(query, memory, value=memory, key_padding_mask=key_padding_mask)[1]
        tgt = self.norm2(tgt + attended)
        return self.norm3(tgt + self.linear2(torch.relu(self.linear1(tgt)))), weights


class ReferenceTransformer(nn.Module):
    """Encoder + decoder as the reference runs them; inputs and output batch-first like IntrModel's."""

    def __init__(self, model, need_weights: bool = True):
        super().__init__()
        if model.config.pre_norm or model.config.activation_function != "relu":
            raise ValueError("the reference-equivalent transformer covers the reference recipe: post-norm, relu")
        self.encoder = nn.ModuleList([ReferenceEncoderLayer(layer) for layer in model.encoder.layers])
        self.decoder = nn.ModuleList([ReferenceDecoderLayer(layer) for layer in model.decoder.layers])
        self.decoder_norm = model.decoder.layer_norm
        for layer in (*self.encoder, *self.decoder):
            layer.need_weights = need_weights

    def forward(self, features, position_embeddings, feature_mask, class_queries):
        """features, position_embeddings [b, h*w, d]; feature_mask [b, h, w]; class_queries [b, n, d] -> [b, n, d]."""
        src, pos = features.transpose(0, 1), position_embeddings.transpose(0, 1)  # [h*w, b, d], as DETR
        query_pos = class_queries.transpose(0, 1)  # [n, b, d]
        key_padding_mask = ~feature_mask.flatten(1)  # [b, h*w], True = padding
        for layer in self.encoder:
            src = layer(src, pos, key_padding_mask)
        tgt = torch.zeros_like(query_pos)
        intermediate = []
        for layer in self.decoder:
            tgt, _ = layer(tgt, src, query_pos, key_padding_mask)
            intermediate.append(self.decoder_norm(tgt))
        return intermediate[-1].transpose(0, 1)
