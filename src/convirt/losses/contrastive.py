"""ConVIRT's bidirectional image-text contrastive loss (Zhang et al., MLHC 2022, Eq. 2-4).

For pair i of a batch of N, with cosine similarity <.,.> and temperature tau::

    l(v->u)_i = -log( exp(<v_i,u_i>/tau) / sum_k exp(<v_i,u_k>/tau) )
    l(u->v)_i = -log( exp(<u_i,v_i>/tau) / sum_k exp(<u_i,v_k>/tau) )
    L = mean_i [ lambda * l(v->u)_i + (1 - lambda) * l(u->v)_i ]

Paper defaults: tau = 0.1, lambda = 0.75 (Sec. 3, "Hyperparameters"). CLIP is the special case
lambda = 0.5 with a learnable tau.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convirt.errors import ConfigError
from convirt.losses.distributed import gather_with_grad

PAPER_TEMPERATURE = 0.1
PAPER_IMAGE_WEIGHT = 0.75


def check_loss_params(temperature: float, image_weight: float) -> None:
    """Reject values for which the loss is undefined or meaningless."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0 (paper: {PAPER_TEMPERATURE}); got {temperature}")
    if not 0.0 <= image_weight <= 1.0:
        raise ConfigError(f"image_weight (lambda) must lie in [0, 1] (paper: {PAPER_IMAGE_WEIGHT}); got {image_weight}")


def bidirectional_nce(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    temperature: float | torch.Tensor = PAPER_TEMPERATURE,
    image_weight: float = PAPER_IMAGE_WEIGHT,
) -> torch.Tensor:
    """The ConVIRT loss on one (single-process) batch of N image and N text embeddings.

    Embeddings need not be normalised: the similarity is cosine. Computed in float32 whatever the
    input dtype (at least), since logits divided by a small tau overflow bf16/fp16 precision.
    """
    return _loss_rows(image_emb, text_emb, image_emb, text_emb, 0, temperature, image_weight)


def _loss_rows(
    image_local: torch.Tensor,
    text_local: torch.Tensor,
    image_all: torch.Tensor,
    text_all: torch.Tensor,
    offset: int,
    temperature: float | torch.Tensor,
    image_weight: float,
) -> torch.Tensor:
    """Mean loss over the local rows, contrasting each against every row of the global batch."""
    dtype = torch.promote_types(image_local.dtype, torch.float32)  # bf16/fp16 -> fp32, fp64 stays
    v, u, v_all, u_all = (F.normalize(t.to(dtype), dim=-1) for t in (image_local, text_local, image_all, text_all))
    targets = torch.arange(offset, offset + v.shape[0], device=v.device)
    image_to_text = F.cross_entropy(v @ u_all.T / temperature, targets)
    text_to_image = F.cross_entropy(u @ v_all.T / temperature, targets)
    return image_weight * image_to_text + (1.0 - image_weight) * text_to_image


class ContrastiveLoss(nn.Module):
    """ConVIRT loss as a module; DDP-aware.

    Under ``torch.distributed`` the embeddings of all ranks are gathered with gradients and each
    rank contrasts its rows against the global batch, so loss and gradients equal single-process
    training on the concatenated batch. ``learn_temperature=True`` makes tau a parameter (CLIP);
    the paper keeps it fixed.
    """

    def __init__(
        self,
        temperature: float = PAPER_TEMPERATURE,
        image_weight: float = PAPER_IMAGE_WEIGHT,
        learn_temperature: bool = False,
    ) -> None:
        super().__init__()
        check_loss_params(temperature, image_weight)
        self.image_weight = image_weight
        self.fixed_temperature = None if learn_temperature else float(temperature)
        if learn_temperature:
            self.log_temperature = nn.Parameter(torch.tensor(float(temperature)).log())

    @property
    def temperature(self) -> float | torch.Tensor:
        if self.fixed_temperature is not None:
            return self.fixed_temperature
        # CLIP clamps the inverse temperature at 100 to keep training stable.
        return self.log_temperature.exp().clamp(min=0.01)

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        if image_emb.shape != text_emb.shape:
            raise ValueError(f"image and text embeddings differ in shape: {tuple(image_emb.shape)} vs {tuple(text_emb.shape)}")
        image_all, offset = gather_with_grad(image_emb)
        text_all, _ = gather_with_grad(text_emb)
        return _loss_rows(image_emb, text_emb, image_all, text_all, offset, self.temperature, self.image_weight)
