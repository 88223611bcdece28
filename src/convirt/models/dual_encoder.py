"""The exported model: image and text towers with their projection heads, tokenizer and
preprocessing, saved as a directory of safetensors + JSON (never a pickle).

``convirt.load(dir)`` returns a :class:`DualEncoder` with ``encode_images`` and ``encode_text``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from convirt import __version__
from convirt.atomic import atomic_path, atomic_write_text
from convirt.config import GloriaConfig, ImageConfig, ProjectionConfig, TextConfig, from_dict
from convirt.errors import ConvirtError
from convirt.models.heads import ProjectionHead
from convirt.models.image import ImageEncoder
from convirt.models.local import LocalImageHead, WordMerger
from convirt.models.text import SCRATCH, TextEncoder, load_pretrained_text, scratch_bert, train_wordpiece_tokenizer

FORMAT = "convirt-dual-encoder"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer"


class DualEncoder(nn.Module):
    """f_v + g_v and f_u + g_u of ConVIRT (Fig. 2), plus everything needed to use them.

    Image-only methods (SimCLR, MoCo v2) leave the text side out (``text_encoder=None``): the same
    folder format, loader and evaluation code then serve them, without a text model to download.
    GLoRIA models add local features (``local_cfg``): a 1x1 projection of an intermediate image stage
    to the word-vector width, and the word-piece merger (:mod:`convirt.models.local`).
    """

    def __init__(self, image_cfg: ImageConfig, text_cfg: TextConfig | None, projection_cfg: ProjectionConfig,
                 image_encoder: ImageEncoder, text_encoder: TextEncoder | None, tokenizer,
                 local_cfg: GloriaConfig | None = None) -> None:
        super().__init__()
        self.image_cfg, self.text_cfg, self.projection_cfg = image_cfg, text_cfg, projection_cfg
        self.image_encoder, self.text_encoder, self.tokenizer = image_encoder, text_encoder, tokenizer
        self.image_head = ProjectionHead(image_encoder.num_features, projection_cfg.dim, projection_cfg.hidden_dim,
                                         projection_cfg.batchnorm)
        self.text_head = None if text_encoder is None else ProjectionHead(
            text_encoder.num_features, projection_cfg.dim, projection_cfg.hidden_dim, projection_cfg.batchnorm)
        self.local_cfg = local_cfg
        self.local_head = self.word_merger = None
        if local_cfg is not None:
            if text_encoder is None:
                raise ConvirtError("local (GLoRIA) features need a text encoder")
            self.local_head = LocalImageHead(image_encoder.stage_channels(local_cfg.stage), text_encoder.num_features)
            self.word_merger = WordMerger(tokenizer)
        self.meta: dict[str, Any] = {}

    @property
    def has_text(self) -> bool:
        return self.text_encoder is not None

    @property
    def has_local(self) -> bool:
        return self.local_head is not None

    def _require_text(self) -> None:
        if self.text_encoder is None:
            method = self.meta.get("method", "an image-only method")
            raise ConvirtError(f"this model has no text encoder (trained with {method}): only images can be encoded")

    # ---------------------------------------------------------------- construction
    @classmethod
    def build(cls, image_cfg: ImageConfig, text_cfg: TextConfig, projection_cfg: ProjectionConfig,
              corpus: Sequence[str] | None = None, tokenizer=None, local_cfg: GloriaConfig | None = None) -> "DualEncoder":
        """New towers from configuration. ``text.model: scratch`` learns a tokenizer on ``corpus``
        unless one is given (a resumed run reuses the tokenizer it learned)."""
        image = ImageEncoder.from_config(image_cfg)
        if text_cfg.model == SCRATCH:
            if tokenizer is None:
                if not corpus:
                    raise ConvirtError("text.model: scratch needs the training reports to learn a tokenizer")
                tokenizer = train_wordpiece_tokenizer(corpus, text_cfg.scratch.vocab_size)
            s = text_cfg.scratch
            hf_model = scratch_bert(len(tokenizer), s.hidden, s.layers, s.heads, text_cfg.max_length)
        else:
            hf_model, tokenizer = load_pretrained_text(text_cfg.model)
        text = TextEncoder(hf_model, text_cfg.pooling, text_cfg.freeze_layers, text_cfg.freeze_embeddings, text_cfg.unpad)
        return cls(image_cfg, text_cfg, projection_cfg, image, text, tokenizer, local_cfg)

    @classmethod
    def build_image_only(cls, image_cfg: ImageConfig, projection_cfg: ProjectionConfig) -> "DualEncoder":
        """f_v + g_v alone, for image-only methods (no text model is loaded)."""
        image = ImageEncoder.from_config(image_cfg)
        return cls(image_cfg, None, projection_cfg, image, None, None)

    # ---------------------------------------------------------------- training-time forward
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        self._require_text()
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.text_cfg.max_length,
                              return_tensors="pt", return_token_type_ids=False)

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_head(self.image_encoder(images))

    def text_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self._require_text()
        return self.text_head(self.text_encoder(input_ids, attention_mask))

    def local_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image encoder features h_v ``(B, C)``, projected sub-region features ``(B, D, h, w)``)."""
        self._require_local()
        h, feature_map = self.image_encoder.forward_with_stage(images, self.local_cfg.stage)
        return h, self.local_head(feature_map)

    def word_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(text encoder features h_u ``(B, H)``, word vectors ``(B, W, H)``, word mask ``(B, W)``)."""
        self._require_local()
        h, tokens = self.text_encoder.forward_layers(input_ids, attention_mask, self.local_cfg.word_layers)
        words, mask = self.word_merger(tokens, input_ids, attention_mask)
        return h, words, mask

    def _require_local(self) -> None:
        if self.local_head is None:
            method = self.meta.get("method", "this method")
            raise ConvirtError(f"this model has no local (word-region) features: trained with {method}, not gloria")

    # ---------------------------------------------------------------- inference API
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def preprocess(self):
        """The evaluation transform (resize, centre crop, normalise) for a ``(1, H, W)`` float tensor."""
        from convirt.data.transforms import eval_transform

        c = self.image_cfg
        return eval_transform(size=c.size, mean=c.mean, std=c.std)

    def _image_batch(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return images if images.ndim == 4 else images.unsqueeze(0)
        import numpy as np
        from PIL import Image

        from convirt.data.images import load_image, to_tensor

        preprocess, tensors = self.preprocess, []
        for item in images:
            if isinstance(item, Image.Image):
                array = np.asarray(item.convert("L"), dtype=np.float32) / 255.0
                tensors.append(preprocess(to_tensor(array)))
            else:
                tensors.append(preprocess(to_tensor(load_image(item))))
        return torch.stack(tensors)

    @torch.no_grad()
    def encode_images(self, images, normalize: bool = True, projected: bool = True, batch_size: int = 64) -> torch.Tensor:
        """Embeddings of a preprocessed batch ``(B, 1, H, W)``, or of file paths / PIL images.

        ``projected=False`` returns the encoder's features h_v (what linear probes use)."""
        was_training = self.training
        self.eval()
        batch = self._image_batch(images)
        outs = []
        for chunk in batch.split(batch_size):
            chunk = chunk.to(self.device)
            out = self.image_encoder(chunk)
            outs.append(self.image_head(out) if projected else out)
        self.train(was_training)
        out = torch.cat(outs).float()
        return F.normalize(out, dim=-1) if normalize else out

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], normalize: bool = True, projected: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Embeddings of raw strings (tokenised here; no sentence sampling)."""
        self._require_text()
        if isinstance(texts, str):
            texts = [texts]
        was_training = self.training
        self.eval()
        outs = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenize(texts[start : start + batch_size])
            h = self.text_encoder(tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device))
            outs.append(self.text_head(h) if projected else h)
        self.train(was_training)
        out = torch.cat(outs).float()
        return F.normalize(out, dim=-1) if normalize else out

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors``, ``config.json`` and ``tokenizer/``; each file atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory / TOKENIZER))
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS) as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT})
        config = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "convirt_version": __version__,
            "image": dataclasses.asdict(self.image_cfg),
            "text": dataclasses.asdict(self.text_cfg) if self.has_text else None,  # None: an image-only model
            "projection": dataclasses.asdict(self.projection_cfg),
            "local": dataclasses.asdict(self.local_cfg) if self.local_cfg is not None else None,
            "text_model_config": self.text_encoder.model.config.to_dict() if self.has_text else None, "meta": self.meta,
        }
        atomic_write_text(directory / CONFIG, json.dumps(config, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "DualEncoder":
        """Rebuild from ``save`` output without any download and without unpickling."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        directory = Path(directory)
        for name in (WEIGHTS, CONFIG):
            if not (directory / name).exists():
                raise ConvirtError(f"{directory} is not a convirt model folder: {name} is missing")
        try:
            config = json.loads((directory / CONFIG).read_text())
        except json.JSONDecodeError as err:
            raise ConvirtError(f"{directory / CONFIG} is not valid JSON: {err}") from err
        if config.get("format") != FORMAT:
            raise ConvirtError(f"{directory / CONFIG} is not a {FORMAT} config")
        if config.get("text") is not None and not (directory / TOKENIZER).exists():
            raise ConvirtError(f"{directory} is not a convirt model folder: {TOKENIZER} is missing")
        image_cfg = from_dict(ImageConfig, {**config["image"], "pretrained": False, "weights": None})
        projection_cfg = from_dict(ProjectionConfig, config["projection"])
        image = ImageEncoder.from_config(image_cfg, pretrained=False)
        if config.get("text") is None:  # image-only method
            return cls._load_weights(cls(image_cfg, None, projection_cfg, image, None, None), directory, config, device)
        text_cfg = from_dict(TextConfig, config["text"])
        hf_config = dict(config["text_model_config"])
        # trust_remote_code=False: a tampered folder may name its own code to run; refuse, never prompt
        hf_model = AutoModel.from_config(AutoConfig.for_model(**hf_config), add_pooling_layer=False, trust_remote_code=False)
        text = TextEncoder(hf_model, text_cfg.pooling, text_cfg.freeze_layers, text_cfg.freeze_embeddings, text_cfg.unpad)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory / TOKENIZER), trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise ConvirtError(f"{directory / TOKENIZER} cannot be loaded as a tokenizer: {str(err).splitlines()[0]}") from err
        local_cfg = from_dict(GloriaConfig, config["local"]) if config.get("local") else None
        model = cls(image_cfg, text_cfg, projection_cfg, image, text, tokenizer, local_cfg)
        return cls._load_weights(model, directory, config, device)

    @staticmethod
    def _load_weights(model: "DualEncoder", directory: Path, config: dict, device) -> "DualEncoder":
        try:
            state = load_file(str(directory / WEIGHTS))
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise ConvirtError(f"{directory / WEIGHTS} cannot be read ({err}); the file is corrupt or truncated") from err
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # tensors of the wrong shape
            raise ConvirtError(f"{directory / WEIGHTS} does not match its config: {str(err).splitlines()[-1].strip()}") from err
        if missing or unexpected:
            raise ConvirtError(f"{directory / WEIGHTS} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.meta = config.get("meta", {})
        return model.to(device).eval()

    def export_image_encoder(self, path: str | Path) -> Path:
        """A plain timm state dict (safetensors) of f_v, loadable with
        ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), in_chans=1)``."""
        if self.image_encoder.attn_pool is not None:  # a timm model would silently average-pool instead
            raise ConvirtError("this image encoder pools with attention (image.pool: attention, method clip), which a plain "
                               "timm state dict cannot hold: use the model folder (convirt.load, --model RUN_DIR) instead")
        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.image_encoder.backbone.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"timm_model": self.image_cfg.model, "in_chans": str(self.image_encoder.in_chans)})
        atomic_write_text(path.with_suffix(".json"), json.dumps(
            {"timm_model": self.image_cfg.model, "in_chans": self.image_encoder.in_chans, "size": self.image_cfg.size,
             "mean": self.image_cfg.mean, "std": self.image_cfg.std, "source": "convirt"}, indent=2))
        return path
