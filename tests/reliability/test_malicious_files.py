"""Loading never unpickles arbitrary objects or runs code a file names: a checkpoint or model file
carrying a pickle that executes a command is refused, and the command never runs."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import convirt
from convirt.errors import ConvirtError
from convirt.training.checkpoint import AtomicCheckpointIO, find_resume_checkpoint, load_checkpoint_file


class Payload:
    """Unpickling this runs a shell command (what a tampered checkpoint would do)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def malicious(tmp_path):
    """A checkpoint-shaped file whose unpickling creates ``marker``; checked to be live."""
    marker = tmp_path / "EXECUTED"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "loops": {}, "global_step": 99, "hook": Payload(marker)}, path)
    torch.load(path, weights_only=False)  # what an unsafe loader does
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_malicious_checkpoint_is_refused_by_every_checkpoint_loader(reference, tmp_path, malicious, caplog):
    evil, marker = malicious
    for load in (load_checkpoint_file, AtomicCheckpointIO().load_checkpoint):  # --resume and Lightning's ckpt_path
        with pytest.raises(ConvirtError, match=rf"checkpoint {evil} is corrupt, truncated or not a plain checkpoint \(UnpicklingError\)"):
            load(evil)
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    shutil.copy(reference.out / "checkpoints" / "step=4.ckpt", ckpts)
    shutil.copy(evil, ckpts / "step=99.ckpt")  # the newest by name
    with caplog.at_level(logging.WARNING, logger="convirt"):
        assert find_resume_checkpoint(ckpts) == ckpts / "step=4.ckpt"
    assert f"checkpoint {ckpts / 'step=99.ckpt'} is corrupt" in caplog.text
    assert not marker.exists()


def test_tampered_model_folders_are_refused_not_executed(reference, tmp_path, malicious):
    evil, marker = malicious
    good = reference.out / "model"
    assert set(p.name for p in good.iterdir()) == {"model.safetensors", "config.json", "tokenizer"}  # safetensors + JSON

    def tampered(name: str):
        folder = tmp_path / name
        shutil.copytree(good, folder)
        return folder

    pickled = tampered("pickle-as-safetensors")
    shutil.copy(evil, pickled / "model.safetensors")
    with pytest.raises(ConvirtError, match="model.safetensors cannot be read .* corrupt or truncated"):
        convirt.load(pickled)

    beside = tampered("pickle-beside")  # loaders never look at other files
    shutil.copy(evil, beside / "pytorch_model.bin")
    shutil.copy(evil, beside / "tokenizer" / "pytorch_model.bin")
    assert convirt.load(beside).encode_text(["The lungs are clear."]).shape == (1, 16)

    shapes = tampered("wrong-shapes")  # a valid safetensors file with other tensors
    state = load_file(str(good / "model.safetensors"))
    state = {k: (torch.zeros(3, *v.shape[1:]) if "head" in k and v.ndim == 2 else v) for k, v in state.items()}
    save_file(state, str(shapes / "model.safetensors"))
    with pytest.raises(ConvirtError, match="model.safetensors does not match its config: .*size mismatch"):
        convirt.load(shapes)

    code = tampered("custom-code")  # the tokenizer asks transformers to import code from the folder
    (code / "tokenizer" / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    settings = json.loads((code / "tokenizer" / "tokenizer_config.json").read_text())
    settings.pop("tokenizer_class", None)
    settings["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    (code / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(settings))
    with pytest.raises(ConvirtError, match="tokenizer cannot be loaded as a tokenizer: .*custom code"):
        convirt.load(code)
    assert not marker.exists()
