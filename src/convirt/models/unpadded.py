"""Padding-free forward of a BERT-family encoder: the token-wise layers see real tokens only.

A batch of reports is padded to its longest one; with ConVIRT's max pooling and masked attention the
padding positions never reach the output, yet Hugging Face's forward computes every linear layer,
LayerNorm and GELU on them. Here the embeddings are computed on the padded batch as usual, the real
tokens are gathered into one ``(tokens, hidden)`` matrix, and every per-token layer (Q/K/V, attention
output, feed-forward, LayerNorms, dropout) runs on that matrix; only the attention itself is done
per sequence, on a padded view rebuilt for it, with the same key mask. This is the "unpadding" of
MosaicBERT and of FlashAttention's variable-length kernels, done with plain PyTorch ops so it runs
on CPU and GPU alike.

The function computes what the padded forward computes, up to floating-point rounding (the matrices
are shaped differently); what differs is the dropout draws (drawn over real tokens only), and that
padding positions of the returned token vectors are zeros instead of values nobody reads. On the
synthetic reports of the benchmarks, 44% of the padded positions are padding (benchmarks/RESULTS.md).

Supported: encoder-only BERT and RoBERTa layouts (ClinicalBERT, CXR-BERT, PubMedBERT, BioBERT …)
with absolute positions; :func:`unpadding_unsupported` says why another model is not, and the text
encoder then falls back to the model's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

MODEL_TYPES = ("bert", "roberta")
_LAYER_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.self.dropout",
                "attention.output.dense", "attention.output.dropout", "attention.output.LayerNorm",
                "intermediate.dense", "intermediate.intermediate_act_fn", "output.dense", "output.dropout",
                "output.LayerNorm")


def _has(module: nn.Module, dotted: str) -> bool:
    for name in dotted.split("."):
        module = getattr(module, name, None)
        if module is None:
            return False
    return True


def unpadding_unsupported(model: nn.Module) -> str | None:
    """``None`` when :func:`unpadded_forward` computes this model's forward; otherwise the reason."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in MODEL_TYPES:
        return f"model type {getattr(config, 'model_type', type(model).__name__)!r} (supported: {', '.join(MODEL_TYPES)})"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "a decoder (causal or cross attention)"
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return f"position_embedding_type {config.position_embedding_type!r} (relative positions act inside attention)"
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not hasattr(model, "embeddings") or layers is None:
        return "no embeddings / encoder.layer"
    missing = [part for part in _LAYER_PARTS if not _has(layers[0], part)]
    if missing:
        return f"its layers lack {', '.join(missing)}"
    return None


def _attention(layer: nn.Module, hidden: torch.Tensor, where: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention of packed tokens ``(T, H)``: per sequence on a padded view."""
    attn = layer.attention.self
    batch, length = key_mask.shape
    heads = attn.num_attention_heads
    width = hidden.shape[-1]

    # Q, K and V in one matmul and one scatter (fewer, larger ops; the weights are concatenated per call)
    weight = torch.cat([attn.query.weight, attn.key.weight, attn.value.weight])
    biases = [attn.query.bias, attn.key.bias, attn.value.bias]
    bias = None if any(b is None for b in biases) else torch.cat(biases)
    qkv = F.linear(hidden, weight, bias)
    full = qkv.new_zeros(batch * length, qkv.shape[-1]).index_copy(0, where, qkv)
    q, k, v = full.view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
    dropout = attn.dropout.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=dropout,
                                         scale=getattr(attn, "scaling", None))
    return out.transpose(1, 2).reshape(batch * length, width).index_select(0, where)


def _layer(layer: nn.Module, hidden: torch.Tensor, where: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """One transformer layer on packed tokens, post-LayerNorm as BERT: the same modules, in the same order."""
    out = layer.attention.output
    hidden = out.LayerNorm(out.dropout(out.dense(_attention(layer, hidden, where, key_mask))) + hidden)
    ff = layer.output
    inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(hidden))
    return ff.LayerNorm(ff.dropout(ff.dense(inner)) + hidden)


def unpadded_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     hidden_states: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """``(last hidden state (B, L, H), all hidden states or None)`` as ``model(...)`` returns them,
    with zeros at padding positions. Activation checkpointing follows the model's own switch."""
    key_mask = attention_mask.bool()
    where = key_mask.flatten().nonzero().squeeze(1)
    batch, length = key_mask.shape
    tokens = model.embeddings(input_ids=input_ids)
    width = tokens.shape[-1]
    hidden = tokens.reshape(batch * length, width).index_select(0, where)

    def unpack(x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(batch * length, width).index_copy(0, where, x).view(batch, length, width)

    states = [unpack(hidden)] if hidden_states else None
    # transformers >= 5 names the switch is_activation_checkpointing (the old name warns when read)
    switch = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    recompute = model.training and getattr(model, switch, False)
    for layer in model.encoder.layer:
        if recompute and torch.is_grad_enabled() and any(p.requires_grad for p in layer.parameters()):
            hidden = checkpoint(_layer, layer, hidden, where, key_mask, use_reentrant=False)
        else:
            hidden = _layer(layer, hidden, where, key_mask)
        if states is not None:
            states.append(unpack(hidden))
    last = states[-1] if states is not None else unpack(hidden)
    return last, (tuple(states) if states is not None else None)
