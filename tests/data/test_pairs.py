"""The training sample stream: coverage, resumability and independence of the device count."""

import itertools

import pytest

from convirt.data.pairs import FixedBatchSampler, StreamBatchSampler, sample_seed
from convirt.errors import DataError


def take(sampler, k):
    return list(itertools.islice(iter(sampler), k))


def test_each_epoch_visits_every_row_once():
    n, bs = 10, 4
    positions = [key for batch in take(StreamBatchSampler(n, bs, seed=3), 5) for key in batch]  # 20 positions
    assert [p for _, p in positions] == list(range(20))
    for epoch in range(2):
        rows = [r for r, p in positions if epoch * n <= p < (epoch + 1) * n]
        assert sorted(rows) == list(range(n))
    first, second = [r for r, p in positions[:n]], [r for r, p in positions[n:]]
    assert first != second  # reshuffled per epoch


def test_resuming_at_a_batch_continues_the_same_stream():
    full = take(StreamBatchSampler(13, 4, seed=1), 12)
    resumed = take(StreamBatchSampler(13, 4, seed=1, start_batch=7), 5)
    assert resumed == full[7:12]


@pytest.mark.parametrize("world", [2, 4])
def test_global_batch_is_the_same_on_any_number_of_devices(world):
    single = take(StreamBatchSampler(37, 8 * world, seed=5), 6)
    ranks = [take(StreamBatchSampler(37, 8, seed=5, rank=r, world_size=world), 6) for r in range(world)]
    for b in range(6):
        assert [key for r in range(world) for key in ranks[r][b]] == single[b]


def test_seeds_differ_per_position_and_are_stable():
    assert sample_seed(0, 1) != sample_seed(0, 2) != sample_seed(1, 1)
    assert sample_seed(7, 123) == sample_seed(7, 123)
    assert 0 <= sample_seed(2**31, 10**12) < 2**63


def test_validation_batches_are_equal_sized_and_disjoint_across_ranks():
    per_rank = [FixedBatchSampler(23, 4, rank=r, world_size=2).batches for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 2  # 23 // 8 full global batches
    keys = [k for r in range(2) for b in per_rank[r] for k in b]
    assert len(keys) == len(set(keys)) == 16 and all(len(b) == 4 for r in range(2) for b in per_rank[r])
    assert FixedBatchSampler(5, 32).batches == [[(i, i) for i in range(5)]]
    with pytest.raises(DataError):
        FixedBatchSampler(3, 32, world_size=2)
