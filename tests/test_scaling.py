"""common.py's helpers for long multi-process runs: the step-tagged checkpoints kept by --keep, the checkpoints
by wall time of --ckpt_minutes, and the batch split of --grad_accum."""
import os

import pytest
import torch

import common


def test_keep_holds_the_newest_step_tagged_copies_and_leaves_later_ones_alone(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    common.save_and_keep({'step': 9}, path, 9, keep=2)  # a later step: the checkpoints of a run resumed from step 3
    for step in (1, 2, 3, 4):
        common.save_and_keep({'step': step}, path, step, keep=2)
    assert sorted(os.listdir(tmp_path)) == ['ckpt.pt', 'ckpt_0000003.pt', 'ckpt_0000004.pt', 'ckpt_0000009.pt']
    assert torch.load(path)['step'] == torch.load(tmp_path / 'ckpt_0000004.pt')['step'] == 4
    assert torch.load(tmp_path / 'ckpt_0000003.pt')['step'] == 3
    common.save_and_keep({'step': 5}, path, 5, keep=0)
    assert common.tagged_checkpoints(path) == {s: str(tmp_path / f'ckpt_000000{s}.pt') for s in (3, 4, 9)}


def test_checkpoints_come_every_n_steps_at_the_end_and_after_the_minutes_at_a_log_step(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(common.time, 'time', lambda: now[0])
    schedule = common.CheckpointSchedule(every=10, last_step=25, minutes=2, device='cpu')
    assert [s for s in range(1, 26) if schedule.due(s, log_step=True)] == [10, 20, 25]
    now[0] += 119
    assert not schedule.due(21, log_step=True)
    now[0] += 2
    assert not schedule.due(21, log_step=False)  # the clock is read at log steps only
    assert schedule.due(22, log_step=True) and not schedule.due(23, log_step=True)  # and restarts at a checkpoint


def test_grad_accum_must_split_the_global_batch_evenly():
    assert common.micro_batch_size(256, world_size=4, grad_accum=2) == 32
    with pytest.raises(common.UserError, match='--batch_size 256 must divide by 3 process'):
        common.micro_batch_size(256, world_size=3, grad_accum=1)
    with pytest.raises(common.UserError, match='--grad_accum 0'):
        common.micro_batch_size(256, world_size=1, grad_accum=0)
