"""The captioning baselines (Caption-LSTM, Caption-Transformer): loss, attention, causality, training."""

import json

import pytest
import torch

import convirt
from convirt.config import load_config
from convirt.losses.caption import caption_loss
from convirt.models.caption import LSTMCaptionDecoder, TransformerCaptionDecoder
from convirt.training.run import pretrain
from tests.helpers import tiny_overrides, write_pair_manifest
from tests.methods.tiny import tiny_batch, tiny_method, train_losses

SMALL = ("caption.hidden=32", "caption.layers=1", "caption.heads=2")


def reference_caption_loss(logits, ids, mask):
    """-log p(x_t | x_<t) summed over the non-padding targets t >= 1, divided by their count."""
    total, count = 0.0, 0
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            if mask[b, t]:
                log_p = logits[b, t - 1].double().log_softmax(dim=-1)
                total -= float(log_p[ids[b, t]])
                count += 1
    return total / count


def test_teacher_forced_loss_matches_a_loop_over_tokens():
    torch.manual_seed(0)
    ids = torch.tensor([[2, 7, 8, 9, 3, 0, 0], [2, 5, 3, 0, 0, 0, 0], [2, 4, 4, 6, 6, 5, 3]])
    mask = (ids != 0).long()
    logits = torch.randn(3, 6, 11)
    assert torch.isclose(caption_loss(logits, ids, mask), torch.tensor(reference_caption_loss(logits, ids, mask)).float())
    assert torch.isclose(caption_loss(logits.bfloat16(), ids, mask).float(),
                         torch.tensor(reference_caption_loss(logits.bfloat16().float(), ids, mask)).float(), atol=1e-5)
    with pytest.raises(ValueError, match="shifted targets"):
        caption_loss(logits[:, :5], ids, mask)


@pytest.mark.parametrize("method", ["caption-lstm", "caption-transformer"])
def test_method_decodes_the_shifted_report_and_scores_the_next_token(method):
    model = tiny_method(method, SMALL + ("caption.attention_reg=0",))
    batch = tiny_batch(model)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (ids[:, 0] == model.bos_id).all() and ((ids == model.eos_id).sum(1) == 1).all()  # [CLS] ... [SEP]
    fixed = torch.randn(ids.shape[0], ids.shape[1] - 1, len(model.model.tokenizer))
    seen = {}

    class FixedDecoder(torch.nn.Module):
        def forward(self, local, input_ids, step_mask):
            seen["input_ids"], seen["step_mask"], seen["local"] = input_ids, step_mask, local
            return fixed, torch.tensor(5.0)

    model.decoder = FixedDecoder()
    loss = model.compute_loss(batch)
    assert torch.equal(seen["input_ids"], ids[:, :-1]) and torch.equal(seen["step_mask"], mask[:, 1:])
    assert seen["local"].ndim == 4  # the spatial feature map, not the pooled vector
    assert abs(float(loss) - reference_caption_loss(fixed, ids, mask)) < 1e-5  # penalty weight 0


def test_parts_the_decoder_does_not_use_are_frozen():
    """Text tower, heads and an attention pool get no gradient from captioning (DDP refuses unused parameters)."""
    model = tiny_method("caption-lstm", SMALL + ("image.pool=attention",))
    unused = (model.model.text_encoder, model.model.text_head, model.model.image_head, model.model.image_encoder.attn_pool)
    assert not any(p.requires_grad for m in unused for p in m.parameters())
    assert all(p.requires_grad for p in model.model.image_encoder.backbone.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())


def test_lstm_attention_weights_sum_to_one_over_positions():
    torch.manual_seed(0)
    decoder = LSTMCaptionDecoder(feat_dim=16, vocab_size=20, hidden=8)
    local = torch.randn(3, 16, 4, 5)
    feats, feats_proj, (h, _) = decoder.start(local)
    _, alpha = decoder.attend(feats, feats_proj, h)
    assert alpha.shape == (3, 20) and (alpha >= 0).all()
    assert torch.allclose(alpha.sum(dim=1), torch.ones(3), atol=1e-6)


def test_lstm_penalty_is_the_variance_of_attention_coverage():
    """Xu et al.'s sum_i (1 - sum_t alpha_ti)^2 less its constant minimum: zero for uniform attention."""
    torch.manual_seed(0)
    decoder = LSTMCaptionDecoder(feat_dim=16, vocab_size=20, hidden=8)
    ids, step_mask = torch.randint(0, 20, (2, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    _, penalty = decoder(torch.randn(2, 16, 3, 3), ids, step_mask)
    assert penalty > 0
    torch.nn.init.zeros_(decoder.att_score.weight)  # constant scores: uniform attention, uniform coverage
    torch.nn.init.zeros_(decoder.att_score.bias)
    _, penalty = decoder(torch.randn(2, 16, 3, 3), ids, step_mask)
    assert float(penalty.detach()) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_a_future_token_does_not_change_earlier_logits(kind):
    torch.manual_seed(0)
    decoder = (LSTMCaptionDecoder(16, 30, hidden=16) if kind == "lstm" else
               TransformerCaptionDecoder(16, 30, hidden=16, layers=2, heads=2)).eval()
    local = torch.randn(2, 16, 3, 3)
    ids = torch.randint(4, 30, (2, 8))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 7) % 30
    with torch.no_grad():
        a, _ = decoder(local, ids)
        b, _ = decoder(local, changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-5)
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-3)


@pytest.mark.parametrize("method", ["caption-lstm", "caption-transformer"])
def test_training_lowers_the_caption_loss_and_generation_runs(method):
    model = tiny_method(method, SMALL)
    batch = tiny_batch(model)
    losses = train_losses(model, batch, steps=20, lr=3e-3)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, losses
    ids = model.generate(batch["images"][:3], max_len=12)
    assert ids.shape[0] == 3 and 1 <= ids.shape[1] <= 12 and model.training
    for row in ids.tolist():  # padding after the end token, only
        if model.eos_id in row:
            assert all(t == model.pad_id for t in row[row.index(model.eos_id) + 1:])
    assert len(model.model.tokenizer.batch_decode(ids, skip_special_tokens=True)) == 3


def test_caption_methods_decode_the_report_by_default():
    assert load_config(overrides=["method=caption-lstm"]).text.sampling == "report"
    assert load_config(overrides=["method=caption-lstm", "text.sampling=sentence"]).text.sampling == "sentence"
    assert load_config(overrides=["method=convirt"]).text.sampling == "sentence"


def test_caption_transformer_pretrains_end_to_end(tmp_path):
    manifest = write_pair_manifest(tmp_path / "data", n_train=8, n_valid=4)
    cfg = load_config(overrides=tiny_overrides(manifest, tmp_path / "run", 2) + ["method=caption-transformer", *SMALL])
    summary = pretrain(cfg)
    assert summary["method"] == "caption-transformer" and summary["global_step"] == 2
    assert torch.isfinite(torch.tensor(summary["metrics"]["val/loss"]))
    model = convirt.load(tmp_path / "run" / "model")  # the same model folder as every method
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["meta"]["method"] == "caption-transformer"
    assert model.encode_images(torch.randn(2, 1, 32, 32), projected=False).shape == (2, 512)
