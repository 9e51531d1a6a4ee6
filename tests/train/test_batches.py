import numpy as np

from tunesmith.train.batches import CPU_BATCH_TOKENS, order_batches, split_by_tokens, token_budget


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


def test_a_batch_is_cut_into_parts_within_the_token_budget():
    lengths = np.array([500, 20, 480, 130, 1500, 90, 250, 30])
    rows = np.arange(8)
    parts = split_by_tokens(rows, lengths, 1024)
    assert sorted(np.concatenate(parts).tolist()) == list(range(8))
    assert [p.tolist() for p in parts] == [[4], [0, 2], [6, 3, 5, 7], [1]]  # longest first; 1500 alone
    assert all(len(p) * lengths[p].max() <= 1024 for p in parts[1:])
    assert [p.tolist() for p in split_by_tokens(rows, lengths, 12_000)] == [[4, 0, 2, 6, 3, 5, 7, 1]]


def test_the_token_budget_splits_on_a_cpu_only_when_auto():
    assert token_budget("auto", "cpu") == CPU_BATCH_TOKENS
    assert token_budget("auto", "cuda") is None
    assert token_budget(None, "cpu") is None and token_budget(300, "cuda") == 300
