"""The speed options of PretrainMethod (trainer.gradient_checkpointing, trainer.compile, optim.fused):
each must leave the loss and the gradients as the plain path computes them."""

from __future__ import annotations

import copy

import pytest
import torch

from convirt.methods.base import apply_speed_options
from tests.methods.tiny import tiny_batch, tiny_method


def _checkpointing(method) -> bool:
    hf = method.model.text_encoder.model
    return getattr(hf, "is_activation_checkpointing", None) or hf.is_gradient_checkpointing  # transformers 5 / 4


def _loss_and_grads(method, batch: dict, seed: int = 0) -> tuple[float, dict[str, torch.Tensor]]:
    method.train()
    method.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # dropout draws
    loss = method.compute_loss(batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


def _twins(extra: tuple[str, ...]):
    """A plain method and a copy with ``extra`` options, with the same weights."""
    plain = tiny_method("convirt", ("text.freeze_layers=1",))
    fast = tiny_method("convirt", ("text.freeze_layers=1", *extra))
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def _assert_same(plain, fast, batch: dict, rtol: float, atol: float) -> None:
    loss_a, grads_a = _loss_and_grads(plain, batch)
    loss_b, grads_b = _loss_and_grads(fast, batch)
    assert loss_b == pytest.approx(loss_a, rel=rtol, abs=atol)
    assert grads_a.keys() == grads_b.keys() and grads_a  # the same trainable parameters, all with gradients
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=rtol, atol=atol, msg=name)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    plain, fast = _twins(("trainer.gradient_checkpointing=true",))
    apply_speed_options(fast)
    assert _checkpointing(fast)
    batch = tiny_batch(plain)
    _assert_same(plain, fast, batch, rtol=1e-5, atol=1e-6)  # dropout is on: the recomputation replays its draws
    # frozen layers stay without gradients, trainable layers above them get theirs
    layers = fast.model.text_encoder.model.encoder.layer
    assert all(p.grad is None for p in layers[0].parameters())
    assert all(p.grad is not None for p in layers[1].parameters())


def test_speed_options_are_applied_once_and_only_when_asked():
    method = tiny_method("convirt")
    apply_speed_options(method)
    assert not _checkpointing(method)
    assert not hasattr(method.model.image_encoder, "_compiled_call_impl") or method.model.image_encoder._compiled_call_impl is None
    method = tiny_method("convirt", ("trainer.compile=true",))
    apply_speed_options(method)
    compiled = method.model.image_encoder._compiled_call_impl
    assert compiled is not None
    method.configure_model()  # Lightning calls it at every fit: no second compilation
    assert method.model.image_encoder._compiled_call_impl is compiled
    assert "backbone.conv1.weight" in method.model.image_encoder.state_dict()  # parameter names unchanged


@pytest.mark.slow
def test_compile_gives_the_same_loss_and_gradients(monkeypatch):
    import torch._inductor.config as inductor_config

    # inductor draws dropout masks with its own generator; with fallback_random it uses eager's, so
    # that the two paths see the same masks and must agree
    monkeypatch.setattr(inductor_config, "fallback_random", True)
    plain, fast = _twins(("trainer.compile=true",))
    apply_speed_options(fast)
    batch = tiny_batch(plain)
    _assert_same(plain, fast, batch, rtol=1e-4, atol=1e-5)  # inductor reorders float sums


def test_fused_adam_takes_the_same_steps():
    """Given the same gradients, fused Adam moves the weights as the default implementation does (up to
    float rounding; the gradients are shared so that rounding is not amplified through the forward)."""
    plain = tiny_method("convirt", ("optim.scheduler=none", "optim.fused=false"))
    fused = tiny_method("convirt", ("optim.scheduler=none",))  # the default
    fused.load_state_dict(plain.state_dict())
    opt_a, opt_b = plain.configure_optimizers(), fused.configure_optimizers()
    assert opt_b.defaults["fused"] and not opt_a.defaults.get("fused")
    batch = tiny_batch(plain)
    for step in range(3):
        _, grads = _loss_and_grads(plain, batch, seed=step)
        for name, p in fused.named_parameters():
            p.grad = grads[name].clone() if name in grads else None
        opt_a.step(), opt_b.step()
        for (name, a), (_, b) in zip(plain.named_parameters(), fused.named_parameters()):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=f"step {step}: {name}")


@pytest.mark.parametrize("unpad", [True, False])
def test_frozen_text_layers_keep_no_autograd_graph(unpad):
    """Frozen layers (and embeddings) compute without recording anything for backward: their outputs
    carry no grad_fn, so no activations are stored for them, while the first trainable layer's are.
    Each layer's output is its last LayerNorm's, on the padded and the padding-free path alike."""
    method = tiny_method("convirt", ("text.freeze_layers=1", f"text.unpad={str(unpad).lower()}"))
    assert method.model.text_encoder.unpad is unpad
    layers = method.model.text_encoder.model.encoder.layer
    seen = {}
    hooks = [layer.output.LayerNorm.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
             for i, layer in enumerate(layers)]
    batch = tiny_batch(method)
    method.train()
    method.compute_loss(batch)
    for h in hooks:
        h.remove()
    assert seen[0].grad_fn is None and not seen[0].requires_grad
    assert seen[1].grad_fn is not None


def test_speed_options_are_validated_as_booleans():
    from convirt.config import load_config
    from convirt.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.compile"):
        load_config(overrides=["trainer.compile=maybe"])
    assert load_config().optim.fused  # a pure speed-up: on by default; the other two are off
    cfg = copy.deepcopy(load_config(overrides=["trainer.gradient_checkpointing=true", "optim.fused=false"]))
    assert cfg.trainer.gradient_checkpointing and not cfg.optim.fused and not cfg.trainer.compile


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), float("-inf")])
def test_all_finite_checks_every_element_and_leaves_the_values(bad):
    from convirt.methods.base import all_finite

    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(7, 3, generator=g), torch.randn(5, generator=g).to(torch.bfloat16), torch.randn(2, 2, 2, generator=g)]
    if bad is not None:
        tensors[1][3] = bad  # in the bf16 group, not the first tensor
    before = [t.clone() for t in tensors]
    reference = all(bool(torch.isfinite(t).all()) for t in tensors)
    assert all_finite(tensors) is reference and reference is (bad is None)
    for t, b in zip(tensors, before):
        torch.testing.assert_close(t, b, rtol=0, atol=0, equal_nan=True)
