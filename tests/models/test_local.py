"""Word-piece merging and the intermediate-stage image features behind GLoRIA's local branch."""

import pytest
import torch

from convirt.errors import ConfigError
from convirt.models.image import ImageEncoder
from convirt.models.local import WordMerger
from convirt.models.text import train_wordpiece_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    # "pneumothorax" never occurs whole in the corpus, so it is split into word pieces
    return train_wordpiece_tokenizer(["small left effusion.", "the heart is normal, no edema.", "pneumonia thorax"] * 5,
                                     vocab_size=80)


def test_word_pieces_are_summed_into_words_and_special_tokens_dropped(tokenizer):
    tokens = tokenizer(["left pneumothorax.", "effusion"], padding=True, return_tensors="pt")
    pieces = tokenizer.convert_ids_to_tokens(tokens["input_ids"][0])
    assert sum(p.startswith("##") for p in pieces) >= 2  # the test needs a word split into pieces
    merger = WordMerger(tokenizer)
    hidden = torch.randn(*tokens["input_ids"].shape, 5)
    words, mask = merger(hidden, tokens["input_ids"], tokens["attention_mask"])
    assert merger.words(tokens["input_ids"], tokens["attention_mask"]) == [["left", "pneumothorax"], ["effusion"]]
    assert mask.tolist() == [[True, True], [True, False]]
    # word vectors written out by hand from the token list: [CLS] left p ##n ... . [SEP]
    ids = tokens["input_ids"][0].tolist()
    first = pieces.index("left")
    last = max(i for i, p in enumerate(pieces) if p.startswith("##"))
    torch.testing.assert_close(words[0, 0], hidden[0, first])
    torch.testing.assert_close(words[0, 1], hidden[0, first + 1 : last + 1].sum(0))
    assert pieces[last + 1] == "." and len(ids) == last + 3  # the full stop and [SEP] belong to no word
    effusion = tokenizer.convert_ids_to_tokens(tokens["input_ids"][1]).index("effusion")
    torch.testing.assert_close(words[1, 0], hidden[1, effusion])


def test_a_report_of_punctuation_only_has_no_words(tokenizer):
    tokens = tokenizer([". ,", "normal"], padding=True, return_tensors="pt")
    words, mask = WordMerger(tokenizer)(torch.randn(*tokens["input_ids"].shape, 3), tokens["input_ids"],
                                        tokens["attention_mask"])
    assert mask.sum(1).tolist() == [0, 1]


def test_stage_features_come_from_the_named_stage_in_the_same_pass():
    torch.manual_seed(0)
    enc = ImageEncoder("resnet18").eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        h, layer3 = enc.forward_with_stage(x, -2)
        expected = enc.backbone.layer3(enc.backbone.layer2(enc.backbone.layer1(enc.backbone.maxpool(
            enc.backbone.act1(enc.backbone.bn1(enc.backbone.conv1(x)))))))
        torch.testing.assert_close(layer3, expected)
        torch.testing.assert_close(h, enc(x))
    assert enc.stage_channels(-2) == 256 and layer3.shape == (2, 256, 4, 4)
    with pytest.raises(ConfigError, match="stage 7 does not exist"):
        enc.stage_index(7)
