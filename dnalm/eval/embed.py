"""Sequence embeddings from a DNA language model's hidden states.

- ``layer`` indexes ``DNALM``'s hidden states: 0 = token embeddings, i = after block i, -1 = after the
  final norm (the default).
- ``pool``: ``mean`` over the sequence's bases (never the [BOS] or padding), ``last`` = the last base
  (in a causal model the only position that has seen the whole sequence), ``none`` = one vector per base.
- Long sequences: a sequence longer than the model's context is cut into consecutive, non-overlapping
  windows of the model's length; each window starts afresh with its own [BOS], so context does not cross
  window boundaries. ``mean`` then averages over all bases of all windows (weighted by length), ``last``
  is the last base of the last window, ``none`` concatenates the windows. The metadata records the
  window length and how many windows each sequence needed.
- Batches are right-padded, which leaves a causal model's real positions exactly unchanged (see
  ``dnalm.models.heads``).

Output files: ``OUT.npy`` (float32; (N, D) pooled, or (total bases, D) for ``none``) and ``OUT.json``
with the ids, lengths, windows per sequence, row offsets (``none``), layer, pooling and model. Both are
written to temporary names and renamed at the end.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dnalm.checkpoint import atomic_write_bytes
from dnalm.data.errors import DataError, listing
from dnalm.data.sequences import read_sequences
from dnalm.eval.metrics import AtomicWriter
from dnalm.eval.metrics import progress as bar
from dnalm.eval.scoring import window_bases
from dnalm.models.heads import count_hidden_states, pool_hidden
from dnalm.tokenizer import BOS, PAD, UNK, encode_bytes


@dataclass
class Embeddings:
    """Embedding array plus its metadata (``offsets`` is set for ``pool="none"``)."""

    array: np.ndarray
    ids: list[str]
    lengths: list[int]
    windows: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, out: str | Path) -> tuple[Path, Path]:
        """Write ``out`` (.npy added if missing) and the metadata JSON beside it, atomically."""
        out = Path(out)
        npy = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
        meta_path = npy.with_suffix(".json")
        buf = io.BytesIO()
        np.save(buf, self.array, allow_pickle=False)
        meta = {**self.meta, "ids": self.ids, "lengths": self.lengths, "windows": self.windows,
                "shape": list(self.array.shape), "array": npy.name}
        atomic_write_bytes(npy, buf.getvalue())
        with AtomicWriter(meta_path) as fh:
            json.dump(meta, fh, indent=1)
            fh.write("\n")
        return npy, meta_path


def read_sequence_file(
    path: str | Path, column: str | None = None, id_column: str | None = None
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """FASTA/GenBank (any compression) or CSV/TSV with a sequence column -> (ids, token ids, lower masks).

    CSV: the sequence column is ``column`` or the first of sequence/seq/seqs/sequences; ids come from
    ``id_column``/``id``/``name`` or are ``row<N>``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".csv", ".tsv", ".txt")):
        rows, header, seq_col, _ = read_table(path, column, None)
        idc = id_column or next((c for c in ("id", "name", "seq_id") if c in header), None)
        ids, toks, lows = [], [], []
        for i, r in enumerate(rows):
            t, lo = encode_bytes(r[seq_col].encode(), f"{path} row {i + 2}")
            ids.append(r[idc] if idc else f"row{i + 2}")
            toks.append(t)
            lows.append(lo)
        return ids, toks, lows

    recs = list(read_sequences(path))
    return [r.name for r in recs], [r.ids for r in recs], [r.lower for r in recs]


def read_table(
    path: str | Path, seq_column: str | None = None, label_column: str | None = None, need_label: bool = False
) -> tuple[list[dict[str, str]], list[str], str, str | None]:
    """A CSV/TSV of sequences -> (rows, header, sequence column, label column or None)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        lines = [ln for ln in fh if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise DataError(f"{path}: empty file")
    delim = "\t" if "\t" in lines[0] else ","
    reader = csv.DictReader(lines, delimiter=delim)
    header = [h for h in (reader.fieldnames or [])]

    def pick(explicit: str | None, names: Sequence[str], what: str, required: bool) -> str | None:
        if explicit is not None:
            if explicit not in header:
                raise DataError(f"{path}: no column {explicit!r} (columns: {', '.join(header)})")
            return explicit
        for n in names:
            if n in header:
                return n
        if required:
            raise DataError(f"{path}: no {what} column (looked for {', '.join(names)}; columns: {', '.join(header)})")
        return None

    sc = pick(seq_column, ("sequence", "seq", "seqs", "sequences"), "sequence", True)
    lc = pick(label_column, ("label", "labels", "class", "y"), "label", need_label)
    rows = list(reader)
    bad = [f"row {i + 2}" for i, r in enumerate(rows) if not (r.get(sc) or "").strip()]
    if bad:
        raise DataError(f"{path}: " + listing(bad, f"rows with an empty {sc!r}"))
    if lc is not None:
        empty = [f"row {i + 2}" for i, r in enumerate(rows) if not (r.get(lc) or "").strip()]
        if empty:
            raise DataError(f"{path}: " + listing(empty, f"rows with an empty label ({lc!r})"))
    return rows, header, sc, lc


def split_windows(ids: np.ndarray, w: int) -> list[np.ndarray]:
    """Consecutive non-overlapping windows of at most ``w`` bases (the last may be shorter)."""
    if len(ids) == 0:
        return [ids]
    return [ids[i : i + w] for i in range(0, len(ids), w)]


def batch_ids(model: Any, windows: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) input ids with [BOS] (if the tokenizer adds it) and a (B, L) mask of real tokens."""
    bos = bool(model.tokenizer.prepend_bos)
    width = max(len(w) for w in windows) + int(bos)
    ids = torch.full((len(windows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.bool)
    for i, w in enumerate(windows):
        row = np.concatenate([[BOS], w]) if bos else np.asarray(w)
        ids[i, : len(row)] = torch.from_numpy(row.astype(np.int64))
        mask[i, : len(row)] = True
    return ids, mask


@torch.no_grad()  # not inference_mode: models cache tensors (RoPE tables) later used with autograd
def embed_sequences(
    model: Any,
    seqs: Sequence[str] | Sequence[np.ndarray],
    *,
    ids: Sequence[str] | None = None,
    layer: int = -1,
    pool: str = "mean",
    batch_size: int = 8,
    window: int | None = None,
    progress: bool = False,
) -> Embeddings:
    """Embed sequences (strings or token-id arrays); see the module docstring for layers/pooling/windows."""
    if pool not in ("mean", "last", "none"):
        raise DataError(f"--pool must be mean, last or none (got {pool!r})")

    n_states = count_hidden_states(model)
    if not -n_states <= layer < n_states:
        raise DataError(
            f"--layer {layer} out of range: this model has hidden states 0..{n_states - 1} (or -1..-{n_states})"
        )
    toks = [encode_bytes(s.encode(), f"sequence {i}")[0] if isinstance(s, str) else np.asarray(s, dtype=np.uint8)
            for i, s in enumerate(seqs)]
    ids = list(ids) if ids is not None else [f"seq{i}" for i in range(len(toks))]
    limit = window_bases(model)
    w = limit if window is None else window
    if w < 1 or w > limit:
        raise DataError(f"window {w} must be between 1 and the model's {limit} bases")
    # every (sequence, window) piece, processed longest-first so batches waste little padding
    pieces = [(si, wi, win) for si, t in enumerate(toks) for wi, win in enumerate(split_windows(t, w))]
    n_windows = [len(split_windows(t, w)) for t in toks]
    order = sorted(range(len(pieces)), key=lambda k: -len(pieces[k][2]))
    d = model.config.d_model
    piece_out: dict[int, np.ndarray] = {}
    was_training = model.training
    model.eval()
    pbar = bar(total=len(pieces), desc="windows", enabled=progress)
    try:
        for b0 in range(0, len(order), batch_size):
            part = order[b0 : b0 + batch_size]
            x, mask = batch_ids(model, [pieces[k][2] for k in part])
            x, mask = x.to(model.device), mask.to(model.device)
            out = model(x, output_hidden_states=True)
            h = out.hidden_states[layer].float()  # (B, L, D)
            real = mask & (x >= UNK)  # bases only
            if pool == "none":
                for r, k in enumerate(part):
                    piece_out[k] = h[r][real[r]].cpu().numpy()
            else:
                # per-window sums (mean) or last base; combined across windows below
                summed = pool_hidden(h, real, "mean") * real.sum(1, keepdim=True)  # (B, D)
                last = pool_hidden(h, real, "last")  # (B, D)
                for r, k in enumerate(part):
                    piece_out[k] = (summed[r] if pool == "mean" else last[r]).cpu().numpy()
            pbar.update(len(part))
    finally:
        pbar.close()
        model.train(was_training)
    lengths = [int(len(t)) for t in toks]
    meta: dict[str, Any] = {"layer": layer, "pool": pool, "window_bases": w, "dim": d,
                            "windowing": "consecutive non-overlapping windows, each with its own [BOS]; "
                                         "context does not cross window boundaries"}
    if pool == "none":
        chunks = [piece_out[k] for k in range(len(pieces))]  # pieces are in (sequence, window) order
        offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        arr = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, d), np.float32)
        meta["offsets"] = offsets
    else:
        arr = np.zeros((len(toks), d), dtype=np.float32)
        for k, (si, wi, win) in enumerate(pieces):
            if pool == "mean":
                arr[si] += piece_out[k] / max(lengths[si], 1)
            elif wi == n_windows[si] - 1:
                arr[si] = piece_out[k]
    return Embeddings(arr.astype(np.float32), ids, lengths, n_windows, meta)
