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


def test_per_position_plot_takes_each_run_at_its_lowest_validation_nll_and_names_runs_by_their_folder(tmp_path):
    logs = []
    for run, best in (('titok', [3.0, 2.0]), ('full', [2.5, 2.2])):
        (tmp_path / run / 'gen').mkdir(parents=True)
        records = [{'step': 1, 'val_nll': 9.0, 'val_nll_per_position': [4.0, 5.0]},
                   {'step': 2, 'val_nll': sum(best), 'val_nll_per_position': best},
                   {'step': 3, 'val_nll': 9.5, 'val_nll_per_position': [4.5, 5.0]}]
        logs.append(tmp_path / run / 'gen' / 'log.jsonl')
        logs[-1].write_text(''.join(json.dumps(r) + '\n' for r in records))
    assert plot.best_per_position(logs[0]) == [(1, 3.0), (2, 2.0)]
    assert plot.run_labels([str(p) for p in logs]) == ['titok', 'full']
    plot.main([str(p) for p in logs] + ['--per_position', '--out', str(tmp_path / 'pos.png')])
    pixels = np.asarray(Image.open(tmp_path / 'pos.png').convert('RGB')).reshape(-1, 3)
    for colour in plot.COLOURS[:2]:
        assert (pixels == colour).all(1).sum() > 50


def test_per_prefix_plot_takes_each_tokenizer_at_its_last_evaluation(tmp_path):
    logs = []
    for run, psnr in (('titok', [10.0, 12.0, 19.0]), ('full', [14.0, 16.0, 17.0])):
        (tmp_path / run / 'tok').mkdir(parents=True)
        records = [{'step': 1000, 'prefixes': [{'prefix': i + 1, 'psnr_vs_image': 5.0} for i in range(3)]},
                   {'step': 1500, 'prefixes': [{'prefix': i + 1, 'psnr_vs_image': v} for i, v in enumerate(psnr)]}]
        logs.append(tmp_path / run / 'tok' / 'eval.jsonl')
        logs[-1].write_text(''.join(json.dumps(r) + '\n' for r in records))
    assert plot.last_per_prefix(logs[1]) == [(1, 14.0), (2, 16.0), (3, 17.0)]
    plot.main([str(p) for p in logs] + ['--per_prefix', '--out', str(tmp_path / 'psnr.png')])
    pixels = np.asarray(Image.open(tmp_path / 'psnr.png').convert('RGB')).reshape(-1, 3)
    for colour in plot.COLOURS[:2]:
        assert (pixels == colour).all(1).sum() > 50


def test_legend_sits_in_the_corner_that_hides_no_data(tmp_path):
    # a curve rising to the top right (where the legend used to sit) leaves the other top corner empty
    out = tmp_path / 'rise.png'
    plot.draw({'rising': [(x, x * x) for x in range(40)]}, out)
    image = np.asarray(Image.open(out).convert('RGB'))
    width = image.shape[1]
    top_band = image[36:46]  # the legend's first sample line, 10 px below the frame's top edge; the curve ends lower
    legend_colour = (top_band == plot.COLOURS[0]).all(-1)
    columns = np.nonzero(legend_colour.any(0))[0]
    assert columns.max() < width // 2, 'the legend covers the curve at the top right'
    assert (image[30:80, width - 60:width - 20] == plot.COLOURS[0]).all(-1).sum() > 50, 'the curve is hidden at the top right'
