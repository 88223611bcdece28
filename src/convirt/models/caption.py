"""Report decoders over the image encoder's spatial features, for ConVIRT's captioning baselines
(Zhang et al., MLHC 2022, Sec. 4: Caption-LSTM, Caption-Transformer). Pretraining the image encoder
by generating the report is the "in-domain" alternative to contrastive learning that ConVIRT beats.

Both decoders take the local features ``(B, C, H, W)`` (or ``(B, N, C)`` tokens) and the teacher
input ids ``(B, T)``, and return logits ``(B, T, V)`` (position t scores token t + 1) and an
auxiliary penalty (or None). Both have a greedy ``generate`` for sanity checks.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def spatial_tokens(local: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H*W, C)``; token sequences ``(B, N, C)`` pass through."""
    return local.flatten(2).transpose(1, 2) if local.ndim == 4 else local


class LSTMCaptionDecoder(nn.Module):
    """Show, Attend and Tell (Xu et al., ICML 2015), soft ("deterministic") attention:

    * ``h_0, c_0`` from the mean annotation vector through two linear layers (Sec. 3.1.2);
    * attention ``e_ti = w^T tanh(W_a a_i + W_h h_{t-1})``, ``alpha_t = softmax_i(e_ti)`` (Eq. 4-5);
    * context gated by ``beta_t = sigmoid(f_beta(h_{t-1}))`` (Sec. 4.2.1);
    * LSTM input ``[E y_{t-1}; z_t]``; deep output ``L_o(E y_{t-1} + L_h h_t + L_z z_t)`` (Eq. 7);
    * Xu et al.'s doubly stochastic penalty ``sum_i (1 - sum_t alpha_ti)^2`` over the real steps
      (Eq. 14), here averaged over the L positions and the images, and less its minimum
      ``(1 - T/L)^2`` (T real steps): since ``sum_i alpha_ti = 1`` that leaves the variance of the
      coverage ``sum_t alpha_ti`` over positions: the same gradient, but zero at uniform coverage,
      so the loss stays on the scale of the token cross-entropy when reports are longer than L.
    """

    def __init__(self, feat_dim: int, vocab_size: int, hidden: int = 512, dropout: float = 0.5, pad_id: int = 0) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, hidden, padding_idx=pad_id)
        self.init_h, self.init_c = nn.Linear(feat_dim, hidden), nn.Linear(feat_dim, hidden)
        self.att_feat, self.att_hidden, self.att_score = nn.Linear(feat_dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
        self.gate = nn.Linear(hidden, feat_dim)
        self.cell = nn.LSTMCell(hidden + feat_dim, hidden)
        self.out_h, self.out_z = nn.Linear(hidden, hidden), nn.Linear(feat_dim, hidden)
        self.out = nn.Linear(hidden, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def start(self, local: torch.Tensor):
        feats = spatial_tokens(local)
        mean = feats.mean(dim=1)
        return feats, self.att_feat(feats), (torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)))

    def attend(self, feats: torch.Tensor, feats_proj: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(context ``(B, C)``, weights ``(B, L)`` summing to 1 over the L positions)."""
        scores = self.att_score(torch.tanh(feats_proj + self.att_hidden(h)[:, None])).squeeze(-1)
        alpha = scores.float().softmax(dim=1).to(feats.dtype)
        return (alpha[..., None] * feats).sum(dim=1), alpha

    def step(self, feats, feats_proj, tokens: torch.Tensor, state):
        h, c = state
        z, alpha = self.attend(feats, feats_proj, h)
        z = torch.sigmoid(self.gate(h)) * z
        e = self.embed(tokens)
        h, c = self.cell(torch.cat([e, z], dim=-1), (h, c))
        logits = self.out(self.dropout(e + self.out_h(h) + self.out_z(z)))
        return logits, (h, c), alpha

    def forward(self, local: torch.Tensor, input_ids: torch.Tensor, step_mask: torch.Tensor | None = None):
        feats, feats_proj, state = self.start(local)
        logits, alphas = [], []
        for t in range(input_ids.shape[1]):
            out, state, alpha = self.step(feats, feats_proj, input_ids[:, t], state)
            logits.append(out)
            alphas.append(alpha)
        alphas = torch.stack(alphas, dim=1).float()  # (B, T, L)
        if step_mask is not None:
            alphas = alphas * step_mask[..., None].float()
        coverage = alphas.sum(dim=1)  # (B, L)
        # mean_i (1 - c_i)^2 - (1 - mean_i c_i)^2, computed as the variance (never negative by rounding)
        penalty = coverage.var(dim=1, unbiased=False)
        return torch.stack(logits, dim=1), penalty.mean()

    @torch.no_grad()
    def generate(self, local: torch.Tensor, bos_id: int, eos_id: int, max_len: int) -> torch.Tensor:
        feats, feats_proj, state = self.start(local)
        tokens = torch.full((feats.shape[0],), bos_id, dtype=torch.long, device=feats.device)
        done = torch.zeros_like(tokens, dtype=torch.bool)
        out = []
        for _ in range(max_len):
            logits, state, _ = self.step(feats, feats_proj, tokens, state)
            tokens = logits.argmax(dim=-1).masked_fill(done, self.pad_id)
            out.append(tokens)
            done |= tokens == eos_id
            if bool(done.all()):
                break
        return torch.stack(out, dim=1)


def sinusoid_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """Vaswani et al.'s fixed position encodings ``(length, dim)``."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return table


class TransformerCaptionDecoder(nn.Module):
    """A transformer captioner in the setting of Cornia et al. (CVPR 2020): the spatial features,
    projected (``Linear -> ReLU -> Dropout -> LayerNorm``), pass a transformer encoder; a transformer
    decoder with a causal mask and sinusoidal positions attends over its output. d = 512, 3 layers,
    8 heads, feed-forward 4d by default. Without Cornia et al.'s memory slots and meshed
    (all-layer) cross-attention: ``torch.nn.TransformerDecoder`` attends to the last encoder layer.
    """

    def __init__(self, feat_dim: int, vocab_size: int, hidden: int = 512, layers: int = 3, heads: int = 8,
                 dropout: float = 0.1, pad_id: int = 0) -> None:
        super().__init__()
        self.pad_id, self.hidden = pad_id, hidden
        self.feat_proj = nn.Sequential(nn.Linear(feat_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.LayerNorm(hidden))
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout, batch_first=True), layers, enable_nested_tensor=False)
        self.embed = nn.Embedding(vocab_size, hidden, padding_idx=pad_id)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(hidden, heads, 4 * hidden, dropout, batch_first=True), layers)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab_size)

    def memory(self, local: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.feat_proj(spatial_tokens(local)))

    def decode(self, memory: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        x = self.embed(input_ids) * math.sqrt(self.hidden) + sinusoid_positions(length, self.hidden, input_ids.device).to(memory.dtype)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=input_ids.device), diagonal=1)  # True: may not attend
        # right padding needs no key mask: real positions only see earlier (real) positions
        return self.out(self.decoder(self.dropout(x), memory, tgt_mask=causal))

    def forward(self, local: torch.Tensor, input_ids: torch.Tensor, step_mask: torch.Tensor | None = None):
        return self.decode(self.memory(local), input_ids), None

    @torch.no_grad()
    def generate(self, local: torch.Tensor, bos_id: int, eos_id: int, max_len: int) -> torch.Tensor:
        memory = self.memory(local)
        ids = torch.full((memory.shape[0], 1), bos_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(memory.shape[0], dtype=torch.bool, device=memory.device)
        for _ in range(max_len):
            tokens = self.decode(memory, ids)[:, -1].argmax(dim=-1).masked_fill(done, self.pad_id)
            ids = torch.cat([ids, tokens[:, None]], dim=1)
            done |= tokens == eos_id
            if bool(done.all()):
                break
        return ids[:, 1:]


def build_caption_decoder(kind: str, feat_dim: int, vocab_size: int, cfg, pad_id: int) -> nn.Module:
    """``kind``: ``lstm`` or ``transformer``; ``cfg`` a :class:`~convirt.config.CaptionConfig`."""
    if kind == "lstm":
        dropout = 0.5 if cfg.dropout is None else cfg.dropout
        return LSTMCaptionDecoder(feat_dim, vocab_size, cfg.hidden, dropout, pad_id)
    if kind == "transformer":
        dropout = 0.1 if cfg.dropout is None else cfg.dropout
        return TransformerCaptionDecoder(feat_dim, vocab_size, cfg.hidden, cfg.layers, cfg.heads, dropout, pad_id)
    raise ValueError(f"unknown caption decoder {kind!r}")
