"""plot.py draws the curves of a training log."""
import json

import numpy as np
from PIL import Image

import plot


def test_log_curves_are_drawn_in_their_colours(tmp_path):
    log = tmp_path / 'log.jsonl'
    records = [{'step': 100, 'loss': 1.0, 'loss_per_position': [1.0, 2.0]}, {'step': 100, 'train_nll': 3.0, 'val_nll': 3.5},
               {'step': 200, 'loss': 0.5, 'loss_per_position': [0.5, 1.0]}, {'step': 200, 'train_nll': 2.0, 'val_nll': 3.0}]
    log.write_text(''.join(json.dumps(r) + '\n' for r in records))
    assert plot.read_series(log, 'batch_nll') == [(100, 3.0), (200, 1.5)]
    assert plot.read_series(log, 'val_nll') == [(100, 3.5), (200, 3.0)]
    plot.main([str(log), '--out', str(tmp_path / 'nll.png')])
    pixels = np.asarray(Image.open(tmp_path / 'nll.png').convert('RGB')).reshape(-1, 3)
    for colour in plot.COLOURS[:3]:
        assert (pixels == colour).all(1).sum() > 50
