"""Pretraining objectives: pure functions and ``nn.Module`` wrappers, testable without Lightning."""

from convirt.losses.contrastive import ContrastiveLoss, bidirectional_nce

__all__ = ["ContrastiveLoss", "bidirectional_nce"]
