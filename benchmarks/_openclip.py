"""open_clip 3.3.0 configured as ConVIRT, offline, for side-by-side benchmarks (not part of the library).

``openclip_twin(method, workdir)`` builds an open_clip ``CustomTextCLIP`` with the same towers as a
convirt :class:`~convirt.methods.convirt.ConVIRT` method and copies its weights, so that both compute
the same loss on the same batch. Built from a local folder (``local-dir:``): a saved ``BertConfig``,
the convirt tokenizer and an ``open_clip_config.json``; nothing is downloaded.

What open_clip needs to be ConVIRT (found on the way; see /work/shared/ENVIRONMENT.md):

* ``hf_model.MaxPooler`` fails (``masked_fill_`` receives the integer attention mask) and is inverted
  (it would blank the real tokens): :class:`ConvirtMaxPooler` is registered instead; it is
  convirt's ``masked_max`` (padding filled with the dtype's lowest value).
* ``HFTextEncoder.lock`` on BERT raises ``KeyError: 'layer_attr'``: the BERT entry of
  ``hf_configs.arch_dict`` gets its layer and embedding attribute names first.
* ``TimmModel`` has no ``in_chans``: the first convolution is replaced by a 1-channel one.
* open_clip's heads (GELU MLPs of other widths, without biases on the text side) are replaced by
  ConVIRT's ``Linear -> ReLU -> Linear`` with biases (hidden width = encoder width).
* Loss: open_clip's ``ClipLoss`` is ConVIRT's loss with lambda = 0.5 and a learned temperature
  (``logit_scale = -log tau``); the convirt side is configured that way for the comparison.
* open_clip's tokenizer pads every caption to ``context_length`` (= convirt's ``text.max_length``);
  convirt pads each batch to its longest caption. Outputs on the real tokens are the same.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

REQUIRED = "open-clip-torch==3.3.0"


def require_open_clip():
    """Import open_clip, or exit with the command that installs it."""
    try:
        import open_clip  # noqa: F401
        import open_clip_train.train  # noqa: F401  (its data module needs braceexpand and webdataset)
    except ImportError as err:
        raise SystemExit(f"this benchmark compares against open_clip, which is not installed ({err}).\n"
                         f"Install the bench extra: pip install -e '.[bench]'  (or: pip install {REQUIRED} "
                         "braceexpand webdataset)") from None
    import open_clip

    if open_clip.__version__ != REQUIRED.split("==")[1]:
        print(f"warning: open_clip {open_clip.__version__} installed; the configuration here was written for {REQUIRED}")
    return open_clip


def _patch_open_clip() -> None:
    from open_clip import hf_model
    from open_clip.hf_configs import arch_dict

    if "convirt_max_pooler" not in hf_model._POOLERS:

        @hf_model.register_pooler
        class ConvirtMaxPooler(nn.Module):
            """Max over the real tokens (open_clip's MaxPooler is broken, see the module docstring)."""

            def forward(self, x, attention_mask: torch.Tensor) -> torch.Tensor:
                tokens = x.last_hidden_state
                fill = torch.finfo(tokens.dtype).min
                return tokens.masked_fill(~attention_mask.bool().unsqueeze(-1), fill).amax(dim=1)

    arch_dict["bert"]["config_names"].setdefault("layer_attr", "layer")
    arch_dict["bert"]["config_names"].setdefault("token_embeddings_attr", "embeddings")


def _relu_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


def openclip_twin(method, workdir: str | Path, copy_weights: bool = True):
    """(open_clip model, open_clip tokenizer) with the towers of the convirt ``method``.

    ``method`` is a :class:`convirt.methods.convirt.ConVIRT` with ``projection.batchnorm: false``.
    With ``copy_weights`` every parameter and buffer is copied from it (the twin then computes the
    same loss); otherwise the twin keeps its own random initialisation.
    """
    open_clip = require_open_clip()
    _patch_open_clip()
    model = method.model
    cfg = method.cfg
    if cfg.projection.batchnorm:
        raise ValueError("the open_clip twin has no batch norm in its heads: use projection.batchnorm=false")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    hf = model.text_encoder.model
    hf.config.save_pretrained(str(workdir))  # config.json: HFTextEncoder reads it with AutoConfig
    model.tokenizer.save_pretrained(str(workdir))  # the tokenizer: HFTokenizer reads the local-dir folder
    model_cfg = {
        "embed_dim": cfg.projection.dim,
        "custom_text": True,
        "vision_cfg": {"timm_model_name": cfg.image.model, "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": "none", "image_size": cfg.image.size},
        "text_cfg": {"hf_model_name": str(workdir), "hf_tokenizer_name": str(workdir), "hf_model_pretrained": False,
                     "hf_pooler_type": "convirt_max_pooler", "hf_proj_type": "linear",
                     "context_length": cfg.text.max_length},
    }
    preprocess = {"mean": [cfg.image.mean], "std": [cfg.image.std], "size": cfg.image.size}
    (workdir / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    clip = open_clip.create_model(f"local-dir:{workdir}", pretrained_image=False, pretrained_text=False,
                                  output_dict=True, load_weights=False)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{workdir}")

    # image tower: 1-channel stem, ConVIRT head
    trunk = clip.visual.trunk
    first = trunk.pretrained_cfg.get("first_conv", "conv1")
    conv = trunk.get_submodule(first)
    if conv.in_channels != model.image_encoder.in_chans:
        new = nn.Conv2d(model.image_encoder.in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, conv.bias is not None)
        parent, _, leaf = first.rpartition(".")
        setattr(trunk.get_submodule(parent) if parent else trunk, leaf, new)
    ih, th = model.image_head, model.text_head
    clip.visual.head = _relu_mlp(ih.in_dim, ih.hidden_dim, ih.out_dim)
    clip.text.proj = _relu_mlp(th.in_dim, th.hidden_dim, th.out_dim)

    # frozen text layers as ConVIRT's (embeddings + the first freeze_layers blocks, LayerNorms included)
    n_layers = len(model.text_encoder._layers())
    frozen = model.text_encoder.frozen_layers
    if frozen:
        clip.lock_text_tower(unlocked_layers=n_layers - frozen, freeze_layer_norm=True)
    elif model.text_encoder.frozen_embeddings:
        hf_twin = clip.text.transformer
        hf_twin.embeddings.requires_grad_(False)
    clip.logit_scale.data.fill_(-math.log(cfg.loss.temperature))  # logit scale = 1 / tau
    if not cfg.loss.learn_temperature:
        clip.logit_scale.requires_grad_(False)
    if copy_weights:
        copy_convirt_weights(method, clip)
    return clip, tokenizer


def _weight_map(method, clip) -> list[tuple[nn.Module, nn.Module]]:
    m = method.model
    return [(m.image_encoder.backbone, clip.visual.trunk), (m.image_head, clip.visual.head),
            (m.text_encoder.model, clip.text.transformer), (m.text_head, clip.text.proj)]


def copy_convirt_weights(method, clip) -> None:
    """Copy every parameter and buffer of the convirt method into its open_clip twin (strict)."""
    with torch.no_grad():
        for src, dst in _weight_map(method, clip):
            dst.load_state_dict(src.state_dict(), strict=True)
        if getattr(method.loss, "fixed_temperature", None) is None:
            clip.logit_scale.copy_(-method.loss.log_temperature.detach())


def count_params(module: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
