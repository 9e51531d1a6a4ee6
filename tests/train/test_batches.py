import numpy as np

from tunesmith.train.batches import order_batches


def test_grouped_batches_pad_little_and_cover_every_row_once():
    lengths = np.random.default_rng(0).integers(3, 60, 3200)
    batches = order_batches(lengths, 32, seed=5, group_by_length=True)
    assert sorted(np.concatenate(batches).tolist()) == list(range(3200))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_padded = sum(len(b) * lengths[b].max() for b in order_batches(lengths, 32, seed=5, group_by_length=False))
    assert padded < 0.6 * random_padded
    assert [b.tolist() for b in batches] == [
        b.tolist() for b in order_batches(lengths, 32, seed=5, group_by_length=True)
    ]


def test_the_longest_batch_comes_first():
    lengths = np.random.default_rng(1).integers(3, 90, 2000)
    batches = order_batches(lengths, 16, seed=2, group_by_length=True)
    assert lengths[batches[0]].max() == lengths.max()
