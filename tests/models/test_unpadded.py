"""The padding-free text forward against Hugging Face's own forward, run on each report alone (no
padding at all: an independent reference) and on the padded batch (gradients)."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint
from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

from convirt.models.text import TextEncoder, scratch_bert
from convirt.models.unpadded import unpadded_forward, unpadding_unsupported

LENGTHS = [11, 4, 9, 1, 11]


def padded_batch(lengths, vocab=300, pad_id=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids.masked_fill(mask == 0, pad_id), mask


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def roberta():
    cfg = RobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=40, pad_token_id=1)
    return RobertaModel(cfg, add_pooling_layer=False)


@pytest.mark.parametrize("build, pad_id", [(lambda: scratch_bert(300, 32, 3, 4, 32), 0), (roberta, 1)],
                         ids=["bert", "roberta"])
def test_each_report_gets_what_the_model_computes_on_it_alone(build, pad_id):
    torch.manual_seed(0)
    model = build().eval()
    ids, mask = padded_batch(LENGTHS, pad_id=pad_id)
    with torch.no_grad():
        last, states = unpadded_forward(model, ids, mask, hidden_states=True)
        for i, n in enumerate(LENGTHS):
            alone = model(input_ids=ids[i:i + 1, :n], attention_mask=mask[i:i + 1, :n], output_hidden_states=True)
            torch.testing.assert_close(last[i, :n], alone.last_hidden_state[0], atol=2e-5, rtol=1e-5)
            assert len(states) == len(alone.hidden_states)
            for ours, theirs in zip(states, alone.hidden_states):
                torch.testing.assert_close(ours[i, :n], theirs[0], atol=2e-5, rtol=1e-5)
            assert not last[i, n:].any()  # padding positions are zeros


@pytest.mark.parametrize("freeze, checkpointing", [(0, False), (2, False), (2, True)])
def test_gradients_match_the_padded_forward(freeze, checkpointing, monkeypatch):
    import convirt.models.unpadded as unpadded

    recomputed = []
    monkeypatch.setattr(unpadded, "checkpoint", lambda *a, **k: recomputed.append(1) or checkpoint(*a, **k))
    torch.manual_seed(0)
    model = no_dropout(scratch_bert(300, 32, 3, 4, 32)).train()
    ids, mask = padded_batch(LENGTHS)
    grads = {}
    for unpad in (False, True):
        enc = TextEncoder(model, pooling="max", freeze_layers=freeze, freeze_embeddings=True, unpad=unpad)
        enc.set_grad_checkpointing(checkpointing)
        model.zero_grad(set_to_none=True)
        pooled, tokens, _ = enc.forward_features(ids, mask)
        (pooled.square().sum() + (tokens * mask[..., None]).sum()).backward()
        grads[unpad] = {n: p.grad for n, p in model.named_parameters()}
    assert grads[True].keys() == grads[False].keys()
    for name, g in grads[False].items():
        if g is None:  # frozen: no gradient on either path
            assert grads[True][name] is None, name
        else:
            torch.testing.assert_close(grads[True][name], g, atol=1e-5, rtol=1e-4, msg=name)
    # only the trainable layers are recomputed, and only when asked
    assert len(recomputed) == (3 - freeze if checkpointing else 0)
    trained = [n for n, g in grads[True].items() if g is not None]
    assert trained and all(f"layer.{i}." not in n for n in trained for i in range(freeze))


def test_gloria_word_features_match_the_padded_forward():
    torch.manual_seed(0)
    model = scratch_bert(300, 32, 4, 4, 32).eval()
    ids, mask = padded_batch(LENGTHS)
    outs = [TextEncoder(model, freeze_layers=0, unpad=u).forward_layers(ids, mask, last_n=3) for u in (False, True)]
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=2e-5, rtol=1e-5)
    real = mask.bool()
    torch.testing.assert_close(outs[1][1][real], outs[0][1][real], atol=2e-5, rtol=1e-5)


def test_bf16_autocast_stays_close_to_fp32():
    torch.manual_seed(0)
    model = scratch_bert(300, 64, 2, 2, 32).eval()
    ids, mask = padded_batch(LENGTHS)
    with torch.no_grad():
        ref = unpadded_forward(model, ids, mask)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = unpadded_forward(model, ids, mask)[0]
    real = mask.bool()
    torch.testing.assert_close(low[real].float(), ref[real], atol=0.1, rtol=0.05)


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    model = scratch_bert(300, 32, 2, 4, 32)
    ids, mask = padded_batch(LENGTHS)
    real = mask.bool()
    with torch.no_grad():
        evaluated = unpadded_forward(model.eval(), ids, mask)[0]
        trained = unpadded_forward(model.train(), ids, mask)[0]
        assert not torch.allclose(trained[real], evaluated[real])
        torch.testing.assert_close(unpadded_forward(no_dropout(model), ids, mask)[0], evaluated, atol=1e-6, rtol=1e-6)


def test_unsupported_models_say_why_and_run_padded():
    distil = DistilBertModel(DistilBertConfig(vocab_size=300, dim=32, n_layers=1, n_heads=2, hidden_dim=64))
    assert "distilbert" in unpadding_unsupported(distil)
    decoder = BertModel(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, is_decoder=True), add_pooling_layer=False)
    assert "decoder" in unpadding_unsupported(decoder)
    assert unpadding_unsupported(scratch_bert(300, 32, 1, 2)) is None
    enc = TextEncoder(decoder, freeze_layers=0, unpad=True)
    assert not enc.unpad
    ids, mask = padded_batch(LENGTHS)
    decoder.eval()
    torch.testing.assert_close(enc.forward_features(ids, mask)[1], decoder(input_ids=ids, attention_mask=mask).last_hidden_state)
