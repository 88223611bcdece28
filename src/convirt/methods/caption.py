"""ConVIRT's captioning baselines (Zhang et al., MLHC 2022, Sec. 4): the image encoder is pretrained
by generating the paired report, with teacher forcing and token cross-entropy
(:func:`~convirt.losses.caption.caption_loss`) over the model tokenizer's vocabulary.

* ``caption-lstm``: Show, Attend and Tell (Xu et al., ICML 2015), an LSTM with soft attention over
  the spatial features, plus its doubly stochastic attention penalty (``caption.attention_reg``);
* ``caption-transformer``: a transformer encoder-decoder over the spatial features in the
  setting of Cornia et al. (CVPR 2020).

The tokens are the batch's ``input_ids`` ([CLS] ... [SEP], right-padded): [CLS] starts every
sequence, [SEP] is the last target. The DualEncoder's text tower and both projection heads are
kept (so run folders, export and evaluation are the same as for every method) but play no part:
they are frozen (also so that DDP sees no parameters without gradients) and are saved untrained,
as is an attention pool (``image.pool: attention``).
The decoder lives in the checkpoints, not in the exported model.
"""

from __future__ import annotations

import torch

from convirt.config import PretrainConfig
from convirt.errors import ConfigError
from convirt.losses.caption import caption_loss
from convirt.methods.base import PretrainMethod
from convirt.models.caption import build_caption_decoder
from convirt.models.dual_encoder import DualEncoder


def _special_ids(tokenizer) -> tuple[int, int, int]:
    bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if bos is None or eos is None or pad is None:
        raise ConfigError("captioning needs a tokenizer with begin ([CLS]/<s>), end ([SEP]/</s>) and padding tokens; "
                          "choose another text.model")
    return bos, eos, pad


class Captioning(PretrainMethod):
    decoder_kind = "lstm"

    def __init__(self, cfg: PretrainConfig, model: DualEncoder) -> None:
        super().__init__(cfg)
        self.model = model
        self.bos_id, self.eos_id, self.pad_id = _special_ids(model.tokenizer)
        for unused in (model.text_encoder, model.text_head, model.image_head, model.image_encoder.attn_pool):
            if unused is not None:  # the attention pool too (image.pool: attention): the decoder reads the feature map
                unused.requires_grad_(False)
        self.decoder = build_caption_decoder(self.decoder_kind, model.image_encoder.num_features, len(model.tokenizer),
                                             cfg.caption, self.pad_id)
        self.attention_reg = cfg.caption.attention_reg if self.decoder_kind == "lstm" else 0.0
        if cfg.trainer.channels_last:
            self.model.image_encoder.to(memory_format=torch.channels_last)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        _, local = self.model.image_encoder.forward_features(self._images(batch))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        logits, penalty = self.decoder(local, ids[:, :-1], mask[:, 1:])
        loss = caption_loss(logits, ids, mask)
        if penalty is not None and self.attention_reg:
            loss = loss + self.attention_reg * penalty
        return loss

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        """Greedy decoding from [CLS]: token ids ``(B, <= max_len)``, [SEP] included, padding after it.
        ``model.tokenizer.batch_decode(ids, skip_special_tokens=True)`` gives the text."""
        was_training = self.training
        self.eval()
        _, local = self.model.image_encoder.forward_features(images.to(self.device))
        ids = self.decoder.generate(local, self.bos_id, self.eos_id, max_len or self.cfg.text.max_length)
        self.train(was_training)
        return ids


class CaptionLSTM(Captioning):
    decoder_kind = "lstm"


class CaptionTransformer(Captioning):
    decoder_kind = "transformer"
