"""GLoRIA's local similarity and loss against a loop-based reference written from the paper's equations."""

import math

import pytest
import torch

from convirt.losses.local import local_contrastive_loss, local_similarity
from convirt.models.local import word_region_attention


def reference_z(regions, words, n_words, tau1, tau2):
    """Z(i, j) with explicit loops over images, reports, words and regions (GLoRIA Eq. 1-3)."""
    n_i, n_j = regions.shape[0], words.shape[0]
    z = torch.zeros(n_i, n_j, dtype=torch.float64)
    for i in range(n_i):
        for j in range(n_j):
            total = 0.0
            for w in words[j, : n_words[j]]:
                w_unit = w / w.norm()
                scores = [tau1 * float(w_unit @ r) for r in regions[i]]
                peak = max(scores)
                weights = [math.exp(s - peak) for s in scores]
                weights = [x / sum(weights) for x in weights]
                context = sum(a * r for a, r in zip(weights, regions[i]))
                cos = float(context @ w) / (float(context.norm()) * float(w.norm()))
                total += math.exp(tau2 * cos)
            z[i, j] = math.log(total)
    return z


def reference_loss(z, tau3):
    n = z.shape[0]
    logits = tau3 * z
    i2t = sum(-(logits[i, i] - torch.logsumexp(logits[i], 0)) for i in range(n)) / n
    t2i = sum(-(logits[j, j] - torch.logsumexp(logits[:, j], 0)) for j in range(n)) / n
    return 0.5 * i2t + 0.5 * t2i


@pytest.mark.parametrize("tau1,tau2,tau3", [(4.0, 5.0, 10.0), (1.0, 2.0, 3.0)])
def test_local_similarity_and_loss_match_a_loop_reference(tau1, tau2, tau3):
    g = torch.Generator().manual_seed(0)
    regions = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    words = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    n_words = [4, 2, 3]
    mask = torch.arange(4)[None, :] < torch.tensor(n_words)[:, None]
    words = words.masked_fill(~mask[..., None], 7.0)  # padding holds junk that must be ignored
    expected = reference_z(regions, words, n_words, tau1, tau2)
    got = local_similarity(regions, words, mask, tau1, tau2, chunk=2)  # chunking must not change anything
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    loss = local_contrastive_loss(regions, words, mask, tau1, tau2, tau3)
    torch.testing.assert_close(loss.double(), reference_loss(expected, tau3), rtol=1e-5, atol=1e-5)


def test_more_images_than_reports_give_a_rectangular_similarity():
    regions, words = torch.randn(5, 4, 3), torch.randn(2, 3, 3)
    assert local_similarity(regions, words, torch.ones(2, 3, dtype=torch.bool)).shape == (5, 2)


def test_a_report_without_words_scores_zero_and_keeps_the_loss_finite():
    regions, words = torch.randn(2, 4, 3), torch.randn(2, 3, 3)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    z = local_similarity(regions, words, mask)
    assert torch.equal(z[:, 1], torch.zeros(2)) and torch.isfinite(z).all()
    assert torch.isfinite(local_contrastive_loss(regions, words, mask))


def test_attention_of_a_hand_built_case_points_at_the_matching_region():
    # region 2 carries the word's direction; the others are orthogonal to it
    regions = torch.zeros(4, 3)
    regions[:, 1] = 1.0
    regions[2] = torch.tensor([3.0, 0.0, 0.0])
    words = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 2.0]])  # "points at region 2" and "points nowhere"
    attn = word_region_attention(words, regions, scale=4.0)
    assert attn.shape == (2, 4)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2))
    assert int(attn[0].argmax()) == 2
    # softmax(4 * <unit word, region>): 4 * 3 = 12 against 0 for the three others
    torch.testing.assert_close(attn[0, 2], torch.tensor(math.exp(12) / (math.exp(12) + 3)))
    torch.testing.assert_close(attn[1], torch.full((4,), 0.25))  # orthogonal to all: uniform


def test_the_matching_pair_scores_highest_when_words_describe_their_image():
    # each image has one distinctive region; its report's word is that region's direction
    regions = torch.zeros(3, 4, 3)
    for i in range(3):
        regions[i, i] = torch.eye(3)[i] * 2
    words = torch.eye(3)[:, None, :]  # report j: one word along axis j
    z = local_similarity(regions, words, torch.ones(3, 1, dtype=torch.bool))
    assert torch.equal(z.argmax(dim=1), torch.arange(3))
