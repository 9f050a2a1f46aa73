"""
Line plots of training logs (log.jsonl) as PNG, drawn with PIL (the repo has no plotting dependency).

    python plot.py out/gen/log.jsonl --out nll.png                       # training vs validation NLL
    python plot.py out/a/log.jsonl out/b/log.jsonl --keys val_nll --out val.png   # runs side by side
    python plot.py out/*/gen/log.jsonl --per_position --out pos.png   # validation NLL per position at each best step
    python plot.py out/*/tok/eval.jsonl --per_prefix --out psnr.png   # tokenizers' PSNR vs the image at every prefix

Each key is read from the records that have it; 'batch_nll' is the training loss per sequence (the sum
of a training record's loss_per_position: dropout and augmentation on, unlike the evaluations).
train_gen.py draws OUT_DIR/nll.png with the default keys after every evaluation.
"""
import argparse
import json
import math
import os

from PIL import Image, ImageDraw, ImageFont

import common

DEFAULT_KEYS = ('batch_nll', 'train_nll', 'val_nll')
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def read_series(path, key):
    """[(step, value)] of one key in a jsonl log, in file order."""
    points = []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if key == 'batch_nll' and 'loss_per_position' in record:
                points.append((record['step'], sum(record['loss_per_position'])))
            elif key in record:
                points.append((record['step'], record[key]))
    return points


def best_per_position(path):
    """[(position, nats)] of the validation NLL per position at the evaluation of lowest validation NLL (best.pt's)."""
    with open(path) as f:
        evaluations = [record for record in map(json.loads, f) if 'val_nll_per_position' in record]
    if not evaluations:
        return []
    best = min(evaluations, key=lambda record: record['val_nll'])
    return [(i + 1, nll) for i, nll in enumerate(best['val_nll_per_position'])]


def last_per_prefix(path):
    """[(prefix, dB)] of PSNR against the image at every prefix, from the last evaluation in a tokenizer's eval.jsonl
    (train_tok.py): how close each prefix comes to the image, coarse to fine or not."""
    with open(path) as f:
        evaluations = [record for record in map(json.loads, f) if 'prefixes' in record]
    return [(p['prefix'], p['psnr_vs_image']) for p in evaluations[-1]['prefixes']] if evaluations else []


def run_labels(paths):
    """Short names for several logs: their folders without the parts every path shares (out/a/gen, out/b/gen: a, b)."""
    parts = [os.path.dirname(os.path.abspath(path)).split(os.sep) for path in paths]
    head = len(os.path.commonprefix(parts))
    tail = len(os.path.commonprefix([p[head:][::-1] for p in parts]))
    return ['/'.join(p[head:len(p) - tail]) or os.path.basename(path) for p, path in zip(parts, paths)]


def nice_ticks(low, high, count=6):
    """About `count` round tick values covering [low, high]."""
    raw = max(high - low, 1e-12) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = step * -(-low // step)
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def draw(series, out, title='', size=(900, 560), xlabel='step'):
    """series: {label: [(x, y)]} -> a PNG line plot with axes, ticks and a legend."""
    series = {label: points for label, points in series.items() if points}
    if not series:
        raise ValueError('nothing to plot: none of the keys is in the log(s)')
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    pad = 0.05 * (max(ys) - min(ys) or 1)
    y0, y1 = min(ys) - pad, max(ys) + pad
    width, height = size
    left, right, top, bottom = 70, 20, 30, 50
    image = Image.new('RGB', size, 'white')
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default()

    def to_pixel(x, y):
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

    pen.rectangle([left, top, width - right, height - bottom], outline='black')
    for x in nice_ticks(x0, x1):
        px, _ = to_pixel(x, y0)
        pen.line([px, height - bottom, px, height - bottom + 4], fill='black')
        pen.text((px - 12, height - bottom + 8), f"{x:g}", fill='black', font=font)
    for y in nice_ticks(y0, y1):
        _, py = to_pixel(x0, y)
        pen.line([left - 4, py, left, py], fill='black')
        pen.line([left, py, width - right, py], fill=(230, 230, 230))
        pen.text((4, py - 6), f"{y:.4g}", fill='black', font=font)
    pen.text((width // 2 - 15, height - 20), xlabel, fill='black', font=font)
    pen.text((left, 8), title, fill='black', font=font)
    for i, (label, points) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        pixels = [to_pixel(x, y) for x, y in points]
        if len(pixels) > 1:
            pen.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            pen.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
    # the legend on a white box in the plot corner where it hides the fewest drawn curve pixels
    box_w, box_h = 205, 6 + 16 * len(series)
    corners = [(width - right - box_w - 2, top + 2), (left + 2, top + 2),
               (width - right - box_w - 2, height - bottom - box_h - 2), (left + 2, height - bottom - box_h - 2)]

    def curve_pixels(corner):
        colours = image.crop((*corner, corner[0] + box_w, corner[1] + box_h)).getcolors(box_w * box_h)
        return sum(count for count, colour in colours if colour in COLOURS)
    bx, by = min(corners, key=curve_pixels)
    pen.rectangle([bx, by, bx + box_w, by + box_h], fill='white', outline=(200, 200, 200))
    for i, label in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        pen.line([bx + 5, by + 10 + 16 * i, bx + 25, by + 10 + 16 * i], fill=colour, width=3)
        pen.text((bx + 30, by + 4 + 16 * i), label, fill='black', font=font)
    image.save(out)


def plot_log(path, out, keys=DEFAULT_KEYS):
    draw({key: read_series(path, key) for key in keys}, out, title=f'NLL per sequence (nats): {path}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    parser.add_argument('logs', nargs='+', help='jsonl logs written by train_gen.py or train_tok.py')
    parser.add_argument('--keys', nargs='+', default=list(DEFAULT_KEYS), help='record keys to plot against step')
    per = parser.add_mutually_exclusive_group()
    per.add_argument('--per_position', action='store_true',
                     help="instead: each log's validation NLL per token position at its best evaluation")
    per.add_argument('--per_prefix', action='store_true',
                     help="instead: each tokenizer eval.jsonl's PSNR against the image at every prefix (last evaluation)")
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument('--title', default='')
    args = parser.parse_args(argv)
    labels = run_labels(args.logs)
    if args.per_position:
        series, xlabel = {label: best_per_position(log) for label, log in zip(labels, args.logs)}, 'position'
    elif args.per_prefix:
        series, xlabel = {label: last_per_prefix(log) for label, log in zip(labels, args.logs)}, 'prefix (tokens)'
    else:
        series = {(f"{label} {key}" if len(args.logs) > 1 else key): read_series(log, key)
                  for label, log in zip(labels, args.logs) for key in args.keys}
        xlabel = 'step'
    try:
        draw(series, args.out, args.title, xlabel=xlabel)
    except ValueError as e:
        raise SystemExit(f"plot.py: {e}")
    print(f"wrote {args.out}")


if __name__ == '__main__':
    main()
