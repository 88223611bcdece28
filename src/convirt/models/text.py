"""Text encoder f_u: a Hugging Face encoder with max pooling over token vectors, lower layers frozen.

ConVIRT (Sec. 3): BERT initialised from ClinicalBERT; ``h_u`` is the max over all output token
vectors; the embeddings and the first 6 transformer layers are frozen, the last 6 trained.
Frozen parameters have ``requires_grad=False``, so autograd records nothing for them (no stored
activations) as long as the embeddings are frozen too. ``unpad=True`` (the default) runs BERT-family
encoders padding-free (:mod:`convirt.models.unpadded`): the same function, without the work on
padding positions.

Offline, a model can be started from scratch: ``train_wordpiece_tokenizer`` learns a WordPiece
vocabulary on the training reports and ``scratch_bert`` builds a BERT from a config.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from convirt.errors import ConfigError
from convirt.models.unpadded import unpadded_forward, unpadding_unsupported

log = logging.getLogger(__name__)

CLINICALBERT = "emilyalsentzer/Bio_ClinicalBERT"
SCRATCH = "scratch"


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 8000, lowercase: bool = True):
    """A BERT WordPiece tokenizer whose vocabulary is learned from ``texts``, reproducibly.

    ``tokenizers``' own WordPiece trainer gives a different vocabulary on every run (hash-map
    order decides ties), which would break seeded reproducibility and exact resume. So the
    vocabulary is chosen here, deterministically: special tokens, every character (word-initial and
    ``##`` continuation), then whole words by frequency (ties alphabetical). Words outside it are
    split by WordPiece's usual greedy longest match. Returned as a ``transformers`` fast tokenizer
    built with ``tokenizer_object=`` (``BertTokenizerFast(vocab_file=...)`` silently maps every
    token to [UNK] in transformers 5).
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, pre = normalizers.BertNormalizer(lowercase=lowercase), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    vocab = special + chars + [f"##{c}" for c in chars]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += words[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre, decoders.WordPiece()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )


def scratch_bert(vocab_size: int, hidden: int = 256, layers: int = 4, heads: int = 4, max_length: int = 128):
    """A randomly initialised BERT of the given size (no download)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=max(512, max_length),
    )
    return BertModel(config, add_pooling_layer=False)


def load_pretrained_text(name_or_path: str):
    """(model, tokenizer) from the Hub cache or a local folder; a clear error when unavailable."""
    from transformers import AutoModel, AutoTokenizer

    try:
        # never run code that a model folder names (a prompt, or a refusal in batch jobs, otherwise)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
        model = AutoModel.from_pretrained(name_or_path, add_pooling_layer=False, trust_remote_code=False)
    except TypeError:  # encoders without a pooling layer argument
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise _unavailable(name_or_path, err) from err
    return model, tokenizer


def check_text_model(name_or_path: str) -> None:
    """Fail fast when ``text.model`` cannot be loaded here: reading its config is cheap, while
    a missing model would otherwise surface only after the data checks."""
    if name_or_path == SCRATCH:
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise _unavailable(name_or_path, err) from err


def _unavailable(name_or_path: str, err: Exception) -> ConfigError:
    return ConfigError(
        f"text.model: cannot load {name_or_path!r} ({type(err).__name__}). Offline machines need a local "
        f"folder (save_pretrained) or text.model: {SCRATCH} to train a tokenizer and start a BERT from a config."
    )


def masked_max(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over the real (unpadded) tokens of each sequence: ``(B, L, H), (B, L) -> (B, H)``."""
    fill = torch.finfo(tokens.dtype).min
    return tokens.masked_fill(~mask.bool().unsqueeze(-1), fill).amax(dim=1)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)


POOLINGS = {"max": masked_max, "mean": masked_mean, "cls": lambda tokens, mask: tokens[:, 0]}


class TextEncoder(nn.Module):
    """HF encoder -> (global vector h_u, token vectors, attention mask)."""

    def __init__(self, model: nn.Module, pooling: str = "max", freeze_layers: int = 6, freeze_embeddings: bool = True,
                 unpad: bool = True):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"text.pooling must be one of {sorted(POOLINGS)}; got {pooling!r}")
        self.model, self.pooling = model, pooling
        reason = unpadding_unsupported(model) if unpad else None
        if reason:
            log.info("text.unpad: %s runs padded (%s)", type(model).__name__, reason)
        self.unpad = unpad and reason is None
        self.num_features: int = model.config.hidden_size
        self.freeze(freeze_layers, freeze_embeddings)

    def freeze(self, layers: int, embeddings: bool) -> None:
        """Freeze the embeddings and the first ``layers`` transformer layers (ConVIRT: 6 of 12)."""
        blocks = self._layers()
        if not 0 <= layers <= len(blocks):
            raise ConfigError(f"text.freeze_layers must lie in [0, {len(blocks)}] for this model; got {layers}")
        if layers and not embeddings:
            raise ConfigError("text.freeze_layers > 0 needs text.freeze_embeddings: true (lower layers see the embeddings)")
        self.frozen_layers, self.frozen_embeddings = layers, embeddings
        if embeddings:
            self.model.get_input_embeddings().requires_grad_(False)
            for module in (getattr(self.model, "embeddings", None),):
                if module is not None:
                    module.requires_grad_(False)
        for block in blocks[:layers]:
            block.requires_grad_(False)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer layer's activations in backward (Hugging Face activation
        checkpointing, non-reentrant, so that trainable layers above frozen ones still get gradients)."""
        if not enable:
            (getattr(self.model, "activation_checkpointing_disable", None) or self.model.gradient_checkpointing_disable)()
            return
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def _layers(self) -> nn.ModuleList:
        encoder = getattr(self.model, "encoder", None)
        layers = getattr(encoder, "layer", None) or getattr(encoder, "layers", None)
        if layers is None:
            raise ConfigError(f"text.model: cannot find the transformer layers of {type(self.model).__name__}")
        return layers

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        if self.unpad:
            tokens = unpadded_forward(self.model, input_ids, attention_mask)[0]
        else:
            tokens = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return POOLINGS[self.pooling](tokens, attention_mask), tokens, attention_mask

    def forward_layers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, last_n: int):
        """(global vector, token vectors summed over the last ``last_n`` layers) in one pass
        (GLoRIA's word features: the sum of BERT's last four layers)."""
        if self.unpad:
            last, states = unpadded_forward(self.model, input_ids, attention_mask, hidden_states=True)
        else:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            last, states = out.last_hidden_state, out.hidden_states
        return POOLINGS[self.pooling](last, attention_mask), torch.stack(states[-last_n:]).sum(dim=0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_features(input_ids, attention_mask)[0]
