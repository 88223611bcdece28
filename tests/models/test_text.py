import pytest
import torch

from convirt.errors import ConfigError
from convirt.models.text import TextEncoder, masked_max, scratch_bert, train_wordpiece_tokenizer

CORPUS = ["There is a small left pleural effusion.", "The heart size is normal.", "No pneumothorax is seen.",
          "Mild cardiomegaly with bibasilar atelectasis."] * 20


def test_wordpiece_tokenizer_knows_the_corpus_words():
    tok = train_wordpiece_tokenizer(CORPUS, vocab_size=200)
    ids = tok("The heart size is normal.")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.unk_token_id not in ids  # the transformers-5 vocab_file trap maps everything to [UNK]


def test_masked_max_ignores_padding_against_a_loop():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    tokens[0, 3:] = 100.0  # padding holds large values that must not win
    got = masked_max(tokens, mask)
    for b in range(3):
        for h in range(4):
            assert got[b, h] == max(tokens[b, t, h] for t in range(5) if mask[b, t])


def test_freezing_embeddings_and_lower_layers():
    model = scratch_bert(vocab_size=300, hidden=32, layers=4, heads=2)
    enc = TextEncoder(model, pooling="max", freeze_layers=3, freeze_embeddings=True)
    layers = model.encoder.layer
    assert not any(p.requires_grad for p in model.embeddings.parameters())
    assert not any(p.requires_grad for layer in layers[:3] for p in layer.parameters())
    assert all(p.requires_grad for p in layers[3].parameters())
    ids = torch.randint(5, 300, (2, 7))
    out = enc(ids, torch.ones_like(ids))
    out.sum().backward()
    assert all(p.grad is None for layer in layers[:3] for p in layer.parameters())
    assert all(p.grad is not None for p in layers[3].parameters())


def test_freeze_layers_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="freeze_layers"):
        TextEncoder(scratch_bert(300, 32, 2, 2), freeze_layers=3)


def test_tokenizer_vocabulary_is_reproducible_and_frequency_ordered():
    a = train_wordpiece_tokenizer(CORPUS, vocab_size=60).get_vocab()
    b = train_wordpiece_tokenizer(list(reversed(CORPUS)), vocab_size=60).get_vocab()
    assert a == b
    assert len(a) == 60
    # with room for only a few whole words, the most frequent ones are chosen
    small = train_wordpiece_tokenizer(["the the the heart heart lung"], vocab_size=5 + 2 * 9 + 2).get_vocab()
    assert "the" in small and "heart" in small and "lung" not in small


def test_hugging_face_encoder_from_a_local_folder(tmp_path):
    """Pretrained encoders load by name or path; offline, a folder written by save_pretrained."""
    from convirt.errors import ConfigError as _ConfigError
    from convirt.models.text import load_pretrained_text

    tok = train_wordpiece_tokenizer(CORPUS, vocab_size=200)
    bert = scratch_bert(len(tok), hidden=32, layers=2, heads=2)
    bert.save_pretrained(tmp_path / "enc")
    tok.save_pretrained(tmp_path / "enc")
    model, tokenizer = load_pretrained_text(str(tmp_path / "enc"))
    ids = tokenizer(["No pneumothorax is seen."], return_tensors="pt")
    assert tokenizer.unk_token_id not in ids["input_ids"][0].tolist()
    with torch.no_grad():
        a = model(**ids).last_hidden_state
        b = bert.eval()(**ids).last_hidden_state
    assert torch.allclose(a, b, atol=1e-6)  # the same weights came back
    with pytest.raises(_ConfigError, match="text.model: scratch"):
        load_pretrained_text(str(tmp_path / "no-such-model"))
