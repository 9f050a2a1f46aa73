"""tokens.py's memorisation probe and the per-process model randomness used by train_gen.py."""
import numpy as np
import torch

import common
import tokens
from generator import GPT, GPTConfig


def test_probe_counts_an_exact_copy_of_a_training_row_and_not_a_shuffled_one():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 1024, (5000, 32)).astype(np.uint16)
    copy = train[1234].astype(np.int64)
    shuffled = copy[rng.permutation(32)]
    assert not np.array_equal(shuffled[:4], copy[:4])
    new_suffix = np.concatenate([copy[:8], (copy[8:] + 1) % 1024])  # a training row's first 8 tokens only
    samples = np.stack([copy, shuffled, new_suffix, rng.integers(0, 1024, 32)])
    shares = tokens.copied_shares(samples, train, (4, 8, 32))
    assert shares == {4: 0.5, 8: 0.5, 32: 0.25}


def test_probe_leaves_out_prefixes_longer_than_the_samples():
    train = np.arange(64, dtype=np.uint16).reshape(2, 32)
    assert tokens.copied_shares(train[:, :8].astype(np.int64), train, (4, 8, 32)) == {4: 1.0, 8: 1.0}


def dropout_output(rank, step):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.preset('tiny', dropout=0.5)).train()
    idx, labels = torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    common.seed_model_randomness(seed=0, step=step, micro_batch=rank)
    return gpt(idx, labels)


def test_ranks_draw_different_dropout_masks_on_the_same_data():
    assert not torch.equal(dropout_output(rank=0, step=5), dropout_output(rank=1, step=5))
    assert not torch.equal(dropout_output(rank=0, step=5), dropout_output(rank=0, step=6))
    assert torch.equal(dropout_output(rank=1, step=5), dropout_output(rank=1, step=5))  # and a resumed run redraws them
