"""Pretraining methods: one LightningModule per objective, sharing :class:`PretrainMethod`."""

from convirt.methods.base import PretrainMethod
from convirt.methods.convirt import ConVIRT

METHODS = {"convirt": ConVIRT}

__all__ = ["METHODS", "ConVIRT", "PretrainMethod"]
