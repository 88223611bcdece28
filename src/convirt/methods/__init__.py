"""Pretraining methods: one LightningModule per objective, sharing :class:`PretrainMethod`."""

from convirt.methods.base import PretrainMethod
from convirt.methods.binary import ContrastiveBinary
from convirt.methods.caption import CaptionLSTM, CaptionTransformer
from convirt.methods.clip import CLIP
from convirt.methods.convirt import ConVIRT
from convirt.methods.gloria import GLoRIA
from convirt.methods.mocov2 import MoCoV2
from convirt.methods.simclr import SimCLR

METHODS = {"convirt": ConVIRT}
METHODS.update({"simclr": SimCLR, "mocov2": MoCoV2})  # image-only baselines (ConVIRT paper, Table 1)
# image-text baselines (ConVIRT paper, Sec. 4) and its successor CLIP
METHODS.update({"binary": ContrastiveBinary, "caption-lstm": CaptionLSTM, "caption-transformer": CaptionTransformer, "clip": CLIP})
METHODS["gloria"] = GLoRIA  # global + local (word-region) contrast, Huang et al. 2021

__all__ = ["CLIP", "METHODS", "CaptionLSTM", "CaptionTransformer", "ContrastiveBinary", "ConVIRT", "GLoRIA", "MoCoV2", "PretrainMethod", "SimCLR"]
