"""Local (word- and region-level) features for GLoRIA (Huang et al., ICCV 2021, Sec. 3.1-3.2).

* Image sub-regions: an intermediate feature map of the image backbone (GLoRIA: ResNet-50
  ``layer3``, 1024 channels, 19 x 19 at 299 px), mapped by a 1x1 convolution to the width of the
  word vectors (:class:`LocalImageHead`; GLoRIA's ``local_embedder``).
* Words: the text tower's token vectors, summed over the last four layers (GLoRIA's
  ``last_n_layers: 4``, ``agg_method: sum``), word pieces merged back into words by summing them
  (GLoRIA's ``aggregate_tokens``), special tokens dropped (:class:`WordMerger`). Deviation: tokens
  made of punctuation only are dropped too (GLoRIA keeps them); they point nowhere.
* Word-to-region attention (GLoRIA Eq. 1): ``a_lm = softmax_m(tau1 * <w_l, r_m>)`` with the word
  vectors L2-normalised and the region features as projected (as GLoRIA's code). Deviation: GLoRIA's
  released code (taken from AttnGAN) first applies a softmax over the *words* and only then the
  scaled softmax over regions; we use the attention of the paper's Eq. 1.
"""

from __future__ import annotations

import string

import torch
import torch.nn.functional as F
from torch import nn

PAPER_ATTENTION_SCALE = 4.0  # GLoRIA tau_1 (a multiplier: softmax(4 <w, r>))


class LocalImageHead(nn.Module):
    """1x1 convolution from an intermediate backbone stage to the word-vector width."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=1)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, D, h, w)``."""
        return self.proj(feature_map)


def _vocabulary(tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    tokens = [""] * len(tokenizer)
    for token, index in vocab.items():
        if index < len(tokens):
            tokens[index] = token
    return tokens


class WordMerger(nn.Module):
    """Token vectors -> word vectors, on device, from the tokenizer's vocabulary alone.

    A WordPiece token that starts with ``##`` continues the previous word; special tokens
    ([CLS], [SEP], [PAD] ...) and punctuation-only tokens belong to no word. Other tokenizers
    (no ``##`` convention) make every token its own word. Lookup tables are buffers, not saved.
    """

    def __init__(self, tokenizer) -> None:
        super().__init__()
        tokens = _vocabulary(tokenizer)
        special = set(getattr(tokenizer, "all_special_tokens", []))
        punct = set(string.punctuation)
        continues = torch.tensor([t.startswith("##") and len(t) > 2 for t in tokens])
        bodies = [t[2:] if t.startswith("##") else t for t in tokens]
        dropped = torch.tensor([t in special or not b or all(c in punct for c in b) for t, b in zip(tokens, bodies)])
        self.register_buffer("continues", continues, persistent=False)
        self.register_buffer("dropped", dropped, persistent=False)
        self.tokens = tokens

    def word_index(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index of each token's word, -1 for none; number of words per sequence)."""
        keep = attention_mask.bool() & ~self.dropped[input_ids]
        starts = keep & ~self.continues[input_ids]
        # a continuation piece right after a dropped token starts a word of its own
        previous_kept = torch.zeros_like(keep)
        previous_kept[:, 1:] = keep[:, :-1]
        starts = starts | (keep & ~previous_kept)
        index = torch.cumsum(starts.long(), dim=1) - 1
        index = torch.where(keep, index, torch.full_like(index, -1))
        return index, starts.sum(dim=1)

    def forward(self, tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, L, H)`` token vectors -> ``(B, W, H)`` word vectors (pieces summed) and a ``(B, W)`` mask."""
        index, counts = self.word_index(input_ids, attention_mask)
        width = max(1, int(counts.max())) if counts.numel() else 1
        words = tokens.new_zeros(tokens.shape[0], width + 1, tokens.shape[-1])  # last slot collects the dropped tokens
        target = torch.where(index >= 0, index, torch.full_like(index, width))
        words = words.scatter_add(1, target.unsqueeze(-1).expand_as(tokens), tokens)[:, :width]
        mask = torch.arange(width, device=tokens.device)[None, :] < counts[:, None]
        return words, mask

    def words(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[str]]:
        """The words themselves (pieces joined), for labelling attention maps."""
        index, counts = self.word_index(input_ids, attention_mask)
        out = []
        for ids, idx, n in zip(input_ids.tolist(), index.tolist(), counts.tolist()):
            words = [""] * n
            for token_id, w in zip(ids, idx):
                if w >= 0:
                    piece = self.tokens[token_id]
                    words[w] += piece[2:] if piece.startswith("##") and words[w] else piece
            out.append(words)
        return out


def word_region_attention(words: torch.Tensor, regions: torch.Tensor, scale: float = PAPER_ATTENTION_SCALE
                          ) -> torch.Tensor:
    """Attention of each word over the regions (GLoRIA Eq. 1).

    ``words`` ``(..., W, D)`` (L2-normalised here), ``regions`` ``(..., M, D)`` -> ``(..., W, M)``,
    each row a distribution over the M regions. Leading dimensions broadcast.
    """
    w = F.normalize(words.float(), dim=-1)
    return torch.softmax(scale * (w @ regions.float().transpose(-1, -2)), dim=-1)
