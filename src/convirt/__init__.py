"""convirt: contrastive learning of medical image encoders from paired images and reports.

Implements ConVIRT (Zhang et al., "Contrastive Learning of Medical Visual Representations from
Paired Images and Text", MLHC 2022) and the evaluation protocols around it.
"""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load an exported model directory (``model.safetensors`` + ``config.json`` + tokenizer).

    Returns a :class:`convirt.models.dual_encoder.DualEncoder` in eval mode with
    ``encode_images`` / ``encode_text``.
    """
    from convirt.models.dual_encoder import DualEncoder

    return DualEncoder.load(path, device=device)


__all__ = ["__version__", "load"]
