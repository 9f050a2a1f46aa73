"""
Token files: an image folder encoded once by a tokenizer, so the generator trains on tokens only.

A token file (.npz) holds `codes` uint16 (M x V, N), `labels` int16 (M x V,) and `meta`, a JSON string
(tokenizer path, sha256 and config, N, K, image size, data root, class names, views, counts). Row
i * V + v is view v of image i: view 0 is the image, view 1 its horizontal flip, views 2.. random
zoom crops (a square of side augment_scale..1 of the image at a random place, resized back, flipped
half the time), drawn from (seed, image index) so that any rerun, chunk or process count writes the
same rows. A generator trains on one view per image per epoch, so augmentation adds variety, not
epochs. Zoom crops stay inside the image: shifted crops with padding would teach the generator to
draw the padding.

Encoding goes chunk by chunk into PATH.partial/ and a rerun continues where it stopped; each process of
a torchrun encodes its share of the chunks. A token file is only used with the tokenizer checkpoint it
was made with (same sha256) and the settings it was made with.
"""
import contextlib
import dataclasses
import json
import os
import shutil
import zipfile

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import common
from data import ImageFolder, collate_skip_bad, to_float


def barrier():
    if dist.is_initialized():
        dist.barrier()


def tokenizer_record(tok, tok_ckpt):
    """What a token file and a generator checkpoint remember of their tokenizer."""
    return {'path': os.path.abspath(tok_ckpt), 'sha256': common.file_sha256(tok_ckpt),
            'config': dataclasses.asdict(tok.config)}


def view_params(image_index, views, augment_scale, seed):
    """(views, 4) float32 rows (side, x offset, y offset, mirror) of image `image_index`'s views, in the
    [-1, 1] frame of affine_grid: view 0 the identity, view 1 the mirror, the rest random zoom crops."""
    params = np.zeros((views, 4), np.float32)
    params[:, 0] = 1.0
    params[1:2, 3] = 1.0
    n_crops = views - 2
    if n_crops > 0:
        rng = np.random.default_rng([seed, image_index])
        side = rng.uniform(augment_scale, 1.0, n_crops)
        params[2:, 0] = side
        params[2:, 1:3] = rng.uniform(-1.0, 1.0, (n_crops, 2)) * (1.0 - side)[:, None]
        params[2:, 3] = rng.integers(0, 2, n_crops)
    return params


def make_views(x, params):
    """x (B, 3, H, W) in [-1, 1], params (B, V, 4) from view_params -> (B * V, 3, H, W), image-major.
    The crop is resampled bicubically (it is enlarged, so no antialiasing is needed); the identity and
    the mirror are copied exactly."""
    B, V = params.shape[:2]
    params = params.to(x.device)
    side, dx, dy, mirror = params.unbind(-1)
    theta = torch.zeros(B, V, 2, 3, device=x.device)
    theta[..., 0, 0] = side * (1 - 2 * mirror)
    theta[..., 0, 2], theta[..., 1, 1], theta[..., 1, 2] = dx, side, dy
    repeated = x.repeat_interleave(V, dim=0)
    exact, flipped = (side == 1).flatten(), (mirror == 1).flatten()
    out = torch.where(flipped[:, None, None, None], repeated.flip(-1), repeated)
    if not exact.all():
        crops = repeated[~exact]
        grid = F.affine_grid(theta.flatten(0, 1)[~exact], list(crops.shape), align_corners=False)
        out[~exact] = F.grid_sample(crops, grid, mode='bicubic', padding_mode='border', align_corners=False).clamp(-1, 1)
    return out


def encode_folder(tok, tok_ckpt, data_root, path, dist_state, views=2, augment_scale=0.8, seed=0, chunk_size=10_000,
                  batch_size=256, workers=8, bf16=False):
    """Encode every image of data_root into `views` rows of the token file at path (see the module docstring);
    finished chunks of an interrupted run are kept. Every process calls this; each encodes its share."""
    device = dist_state.device
    N, K = tok.config.n_tokens, tok.config.codebook_size
    if K > 2 ** 16:
        raise common.UserError(f"a codebook of {K} codes does not fit the token file's uint16")
    dataset = ImageFolder(data_root, tok.config.image_size)
    if len(dataset.classes) >= 2 ** 15:
        raise common.UserError(f"{len(dataset.classes)} classes do not fit the token file's int16 labels")
    record = tokenizer_record(tok, tok_ckpt)
    partial = path + '.partial'
    settings = {'tok_ckpt': record['path'], 'tok_sha256': record['sha256'], 'tok_config': record['config'],
                'n_tokens': N, 'codebook_size': K, 'image_size': tok.config.image_size,
                'data': os.path.realpath(data_root), 'n_images': len(dataset), 'classes': dataset.classes,
                'views': views, 'augment_scale': augment_scale if views > 2 else None, 'augment_seed': seed if views > 2 else None,
                'chunk_size': chunk_size, 'bf16': bf16}
    settings_path = os.path.join(partial, 'settings.json')
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            started = json.load(f)
        refuse_other_tokenizer(started, record, partial)
        changed = [k for k in settings if k != 'tok_ckpt' and started.get(k) != settings[k]]
        if changed:
            raise common.UserError(f"the interrupted encoding in {partial!r} used other {', '.join(changed)}: "
                                   f"delete {partial!r} or rerun with its settings")
    elif dist_state.master:
        os.makedirs(partial, exist_ok=True)
        common.atomic_write(settings_path, lambda f: f.write(json.dumps(settings).encode()))

    def chunk_path(k):
        return os.path.join(partial, f'chunk_{k:06d}.npz')

    n_chunks = -(-len(dataset) // chunk_size)
    todo = [k for k in range(n_chunks) if not os.path.exists(chunk_path(k))]
    if dist_state.master and len(todo) < n_chunks:
        print(f"resuming the encoding in {partial}: {n_chunks - len(todo)} of {n_chunks} chunks already done")
    barrier()  # every process has listed `todo` before any writes a chunk, so all agree on the split
    mine = todo[dist_state.rank::dist_state.world_size]

    # one loader over all my chunks; batches never straddle two chunks
    batches, batch_chunk = [], []
    for k in mine:
        start, end = k * chunk_size, min((k + 1) * chunk_size, len(dataset))
        for s in range(start, end, batch_size):
            batches.append(list(range(s, min(s + batch_size, end))))
            batch_chunk.append(k)
    loader = torch.utils.data.DataLoader(IndexedImages(dataset), batch_sampler=batches, num_workers=workers,
                                         collate_fn=collate_indexed, pin_memory=device.type == 'cuda')
    pbar = common.progress_bar(total=sum(map(len, batches)), desc=f'encode {os.path.basename(path)}', unit='img',
                               disable=not dist_state.master)
    codes, labels, n_bad = [], [], 0
    for i, (images, batch_labels, indices, bad) in enumerate(loader):
        if len(images):
            params = torch.from_numpy(np.stack([view_params(j, views, augment_scale, seed) for j in indices]))
            x = make_views(to_float(images, device), params)
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                rows = torch.cat([tok.encode(part) for part in x.split(2 * batch_size)])
            codes.append(rows.cpu().numpy().astype(np.uint16))
            labels.append(batch_labels.repeat_interleave(views).numpy().astype(np.int16))
        n_bad += bad
        pbar.update(len(batches[i]))
        if i + 1 == len(batches) or batch_chunk[i + 1] != batch_chunk[i]:
            chunk = dict(codes=np.concatenate(codes or [np.zeros((0, N), np.uint16)]),
                         labels=np.concatenate(labels or [np.zeros(0, np.int16)]), n_bad=n_bad)
            common.atomic_write(chunk_path(batch_chunk[i]), lambda f: np.savez(f, **chunk))
            codes, labels, n_bad = [], [], 0
    pbar.close()
    barrier()

    if dist_state.master:
        parts = {'codes': [], 'labels': []}
        n_bad = 0
        for k in range(n_chunks):
            with np.load(chunk_path(k)) as chunk:
                parts['codes'].append(chunk['codes'])
                parts['labels'].append(chunk['labels'])
                n_bad += int(chunk['n_bad'])
        codes, labels = np.concatenate(parts['codes']), np.concatenate(parts['labels'])
        meta = {**settings, 'n_rows': len(codes), 'n_bad': n_bad}
        common.atomic_write(path, lambda f: np.savez(f, codes=codes, labels=labels, meta=np.array(json.dumps(meta))))
        shutil.rmtree(partial)
        print(f"wrote {path}: {len(codes)} token rows, {views} view(s) of each of {len(dataset) - n_bad} images"
              + (f", {n_bad} unreadable image(s) skipped" if n_bad else ""))
    barrier()


class IndexedImages(torch.utils.data.Dataset):
    """An ImageFolder whose items also carry their index, which seeds the image's views."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        return None if item is None else (*item, i)


def collate_indexed(batch):
    images, labels, n_bad = collate_skip_bad(batch)
    return images, labels, [b[2] for b in batch if b is not None], n_bad


def refuse_other_tokenizer(made_with, record, what):
    """The codes of one tokenizer mean nothing to another: stop with the two ways out."""
    if made_with['tok_sha256'] != record['sha256']:
        raise common.UserError(f"{what} was made with tokenizer {made_with['tok_ckpt']!r} (sha256 {made_with['tok_sha256'][:12]}), "
                               f"not with --tok_ckpt {record['path']!r} (sha256 {record['sha256'][:12]}): delete {what} to encode "
                               f"again, or pass --tok_ckpt {made_with['tok_ckpt']}")


@contextlib.contextmanager
def open_token_file(path):
    """np.load of a token file; a truncated or foreign file stops with its path and the fix, not BadZipFile."""
    try:
        with np.load(path) as f:
            yield f
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError) as e:
        raise common.UserError(f"{path!r} is truncated or not a token file ({type(e).__name__}: {e}): delete it to "
                               f"encode again") from None


def read_meta(path):
    """A token file's meta (np.load leaves the codes unread); files written before views existed hold 2."""
    with open_token_file(path) as f:
        meta = json.loads(f['meta'].item())
    meta.setdefault('views', 2)
    return meta


def check_token_file(path, record, data_root=None, views=None, flag='--data'):
    """The meta of the token file at path, once it is known to match the tokenizer, data_root and views."""
    meta = read_meta(path)
    refuse_other_tokenizer(meta, record, path)
    if data_root and os.path.realpath(data_root) != meta['data']:
        raise common.UserError(f"{path!r} holds the tokens of {meta['data']!r}, not of {flag} {data_root!r}: "
                               f"delete it to encode again, or drop {flag}")
    if views is not None and meta['views'] != views:
        raise common.UserError(f"{path!r} holds {meta['views']} view(s) per image, not {views}: delete it to encode again "
                               f"with {views}, or pass --augment {meta['views']}")
    return meta


def load(path):
    """(codes uint16 (M x V, N), labels int16 (M x V,), meta) of a token file."""
    with open_token_file(path) as f:
        return f['codes'], f['labels'], read_meta(path)


def prefix_hashes(codes, k):
    """One uint64 per row of integer codes (R, >= k): a polynomial hash of its first k codes (wrapping
    arithmetic), so that rows compare by one integer; two different prefixes collide with probability ~2^-64."""
    h = np.zeros(len(codes), np.uint64)
    multiplier = np.uint64(0x100000001B3)
    with np.errstate(over='ignore'):
        for column in np.asarray(codes[:, :k], dtype=np.uint64).T:
            h = (h ^ column) * multiplier + np.uint64(0x9E3779B97F4A7C15)
    return h


def copied_shares(samples, train_codes, ks):
    """{k: share of sample rows whose first k codes equal those of some training row}, for each k in ks
    (k larger than the rows are long is left out): the memorisation probe. Exact prefixes are compared
    through 64-bit hashes."""
    samples = np.asarray(samples)
    shares = {}
    for k in ks:
        if k <= min(samples.shape[1], train_codes.shape[1]):
            shares[k] = float(np.isin(prefix_hashes(samples, k), prefix_hashes(train_codes, k)).mean())
    return shares


def training_codes(path):
    """The codes of a generator's training token file, or None with a printed reason when it is not here
    (the memorisation probe is then skipped)."""
    if not path or not os.path.isfile(path):
        print(f"memorisation probe skipped: the training token file {path!r} is not here")
        return None
    return load(path)[0]


def memorisation_probe(train_tokens_path, samples, n_tokens):
    """copied_shares of generated codes against the generator's training rows (k = 4, 8, N), or None when the
    token file is not there to compare with."""
    train_codes = training_codes(train_tokens_path)
    return None if train_codes is None else copied_shares(samples, train_codes, sorted({4, 8, n_tokens}))
