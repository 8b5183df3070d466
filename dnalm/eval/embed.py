"""Sequence embeddings from a DNA language model's hidden states.

- ``layer`` indexes ``DNALM``'s hidden states: 0 = token embeddings, i = after block i, -1 = after the
  final norm (the default).
- ``pool``: ``mean`` over the sequence's bases (never the [BOS], padding or N), ``last`` = the last base
  that is not N (in a causal model the only position that has seen the whole sequence), ``none`` = one vector per base.
- Long sequences (longer than the model's context; the same rules serve ``finetune`` and ``predict``,
  see :func:`fit_to_context`): an error by default, naming them. ``crop`` keeps one window of each
  (``center``, ``left`` = the first bases, ``right`` = the last). ``windows`` cuts each into consecutive,
  non-overlapping windows of the model's length; each window starts afresh with its own [BOS], so context
  does not cross window boundaries. ``mean`` then averages over all bases of all windows (weighted by
  length), ``last`` is the last base of the last window, ``none`` concatenates the windows. The metadata
  records the policy, the window length and how many windows each sequence needed.
- Batches are right-padded, which leaves a causal model's real positions exactly unchanged (see
  ``dnalm.models.heads``).

- ``module``: instead of a hidden state, the output of any submodule by name, e.g. ``blocks.28.mlp.l3`` as
  Evo 2's notebooks name it (``blocks.N`` is read as ``backbone.layers.N``; a name may also leave out the
  ``backbone.`` prefix). It is caught with a forward hook on the ordinary forward pass; its width may differ
  from the model's (an MLP's inner layer). The module must run at the input's resolution (not inside a
  dnaHNet's compressed stage).
- Batches: pieces are sorted by length (longest first) so each batch is padded to nearly its own length;
  the outputs go back to input order. The metadata records the share of padded positions.

Output files: ``OUT.npy`` (float32; (N, D) pooled, or (total bases, D) for ``none``/``per-position``) and
``OUT.json`` with the ids, lengths, windows per sequence, row offsets (per position), layer or module,
pooling and model; or ``OUT.parquet`` (needs the optional ``pyarrow``: ``pip install pyarrow``): one row per
sequence (``id``, ``length``, ``windows``, ``embedding``) or per base (``id``, ``position``, ``embedding``),
with the same metadata as JSON in the file's key-value metadata under ``dnalm``. Files are written to
temporary names and renamed at the end.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dnalm.data.errors import DataError, listing
from dnalm.data.sequences import read_sequences
from dnalm.data.tables import check_input_file, is_regular_file, read_table
from dnalm.eval.metrics import progress as bar
from dnalm.eval.scoring import count_scored, window_bases
from dnalm.models.heads import count_hidden_states, pool_hidden
from dnalm.outputs import atomic_write_bytes, atomic_write_text, output_group
from dnalm.tokenizer import UNK, encode_bytes


@dataclass
class Embeddings:
    """Embedding array plus its metadata (``offsets`` is set for ``pool="none"``)."""

    array: np.ndarray
    ids: list[str]
    lengths: list[int]
    windows: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    def full_meta(self, name: str) -> dict[str, Any]:
        return {**self.meta, "ids": self.ids, "lengths": self.lengths, "windows": self.windows,
                "shape": list(self.array.shape), "array": name}

    def save(self, out: str | Path) -> tuple[Path, Path]:
        """Write ``out`` (.npy added if missing) and the metadata JSON beside it, atomically and together;
        or, for a ``.parquet`` path, one Parquet file holding both (returned twice)."""
        if is_parquet(out):
            return self.save_parquet(out)
        npy, meta_path = embedding_paths(out)
        buf = io.BytesIO()
        np.save(buf, self.array, allow_pickle=False)
        meta = {**self.meta, "ids": self.ids, "lengths": self.lengths, "windows": self.windows,
                "shape": list(self.array.shape), "array": npy.name}
        with output_group():  # both files appear, or neither
            atomic_write_bytes(npy, buf.getvalue())
            atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
        return npy, meta_path

    def save_parquet(self, out: str | Path) -> tuple[Path, Path]:
        pa, pq = parquet_modules()
        out = Path(out)
        d = self.array.shape[1] if self.array.ndim == 2 else 0
        values = pa.array(self.array.reshape(-1), type=pa.float32())
        emb = pa.FixedSizeListArray.from_arrays(values, d)
        if "offsets" in self.meta:  # per position: one row per base
            off = self.meta["offsets"]
            seq = np.repeat(np.arange(len(self.ids)), np.diff(off))
            pos = np.concatenate([np.arange(n) for n in np.diff(off)]) if len(seq) else np.zeros(0, np.int64)
            table = pa.table({"id": pa.array([self.ids[i] for i in seq], pa.string()),
                              "position": pa.array(pos.astype(np.int64)), "embedding": emb})
        else:
            table = pa.table({"id": pa.array(self.ids, pa.string()), "length": pa.array(self.lengths, pa.int64()),
                              "windows": pa.array(self.windows, pa.int32()), "embedding": emb})
        meta = {k: v for k, v in self.full_meta(out.name).items() if k not in ("ids", "lengths", "windows")}
        table = table.replace_schema_metadata({"dnalm": json.dumps(meta)})
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        atomic_write_bytes(out, buf.getvalue().to_pybytes())
        return out, out


def is_parquet(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".parquet"


def parquet_modules() -> tuple[Any, Any]:
    """(pyarrow, pyarrow.parquet), or a DataError saying how to get them (an optional dependency)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            "writing .parquet needs the optional package pyarrow (pip install pyarrow, or pip install "
            "'dnalm[parquet]'); .npy output needs nothing more"
        ) from None
    return pa, pq


def resolve_module(model: Any, name: str) -> tuple[str, Any]:
    """The submodule of ``model`` called ``name``, also accepting ``blocks.N...`` (Evo 2's naming) for
    ``backbone.layers.N...`` and names without the ``backbone.`` prefix. DataError listing examples otherwise."""
    mods = dict(model.named_modules())
    tries = [name, f"backbone.{name}"]
    if name.startswith("blocks."):
        tries.append("backbone.layers." + name[len("blocks."):])
    for t in tries:
        if t and t in mods:
            return t, mods[t]
    example = [n for n in mods if n.count(".") >= 2][:6]
    raise DataError(f"--module {name}: no such module in this model (names look like: {', '.join(example)})")


def embedding_paths(out: str | Path) -> tuple[Path, Path]:
    """The ``.npy`` array and ``.json`` metadata paths of an embedding output."""
    out = Path(out)
    npy = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
    return npy, npy.with_suffix(".json")


def read_sequence_file(
    path: str | Path, column: str | None = None, id_column: str | None = None
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """FASTA/GenBank (any compression) or CSV/TSV with a sequence column -> (ids, token ids, lower masks).

    CSV: the sequence column is ``column`` or the first of sequence/seq/seqs/sequences; ids come from
    ``id_column``/``id``/``name`` or are ``line<N>`` (the 1-based file line).
    """
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith((".csv", ".tsv", ".txt")) or not is_regular_file(path):
        table, sc, _ = read_sequence_table(path, column, None, seq_option="--column")
        idc = table.column(id_column, ("id", "name", "seq_id"), "id", required=False)
        ids = [r[idc] if idc is not None else f"line{ln}" for ln, r in zip(table.lines, table.rows)]
        toks, lows = encode_column(table, sc)
        return ids, toks, lows

    check_input_file(path, "sequence file")
    recs = list(read_sequences(path))
    return [r.name for r in recs], [r.ids for r in recs], [r.lower for r in recs]


def read_sequence_table(
    path: str | Path, seq_column: str | None = None, label_column: str | None = None, need_label: bool = False,
    seq_option: str = "--seq-column",
):
    """A CSV/TSV of sequences (:func:`dnalm.data.tables.read_table`) -> (Table, sequence column index, label
    column index or None). Empty sequences and empty labels are errors naming the lines."""
    table = read_table(path, "sequence table", delimiters=("\t", ","))
    sc = table.column(seq_column, ("sequence", "seq", "seqs", "sequences"), "sequence", option=seq_option)
    lc = table.column(label_column, ("label", "labels", "class", "y"), "label", required=need_label,
                      option="--label-column")
    for j, what in ((sc, "sequence"), (lc, "label")):
        if j is None:
            continue
        empty = [f"line {ln}" for ln, r in zip(table.lines, table.rows) if not r[j]]
        if empty:
            raise DataError(f"{table.name}: " + listing(empty, f"rows with an empty {what} ({table.header[j]!r})"))
    return table, sc, lc


def encode_column(table: Any, j: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token ids and lower-case masks of column ``j`` of a Table; a bad character names line and column."""
    toks, lows = [], []
    for ln, r in zip(table.lines, table.rows):
        t, lo = encode_bytes(r[j].encode(), f"{table.name}: line {ln}, column {table.header[j]!r}")
        toks.append(t)
        lows.append(lo)
    return toks, lows


def split_windows(ids: np.ndarray, w: int) -> list[np.ndarray]:
    """Consecutive non-overlapping windows of at most ``w`` bases (the last may be shorter)."""
    if len(ids) == 0:
        return [ids]
    return [ids[i : i + w] for i in range(0, len(ids), w)]


LONG_HELP = "pass --crop center|left|right to keep one window of each, or --windows to pool over tiled windows"


def fit_to_context(
    seqs: Sequence[np.ndarray], limit: int, *, crop: str | None = None, windows: bool = False,
    names: Sequence[str] | None = None, source: str = "input", what: str = "the model's",
) -> tuple[list[list[np.ndarray]], int]:
    """Each sequence as a list of windows of at most ``limit`` bases, and how many were longer than that.

    A sequence that fits is one window. A longer one is an error (the default, listing them), or with
    ``crop`` keeps one window: ``center`` (the middle ``limit`` bases), ``left`` (the first) or ``right``
    (the last); or with ``windows`` is tiled into consecutive windows (the last may be shorter)."""
    if crop is not None and windows:
        raise DataError("give --crop or --windows, not both")
    if crop not in (None, "center", "left", "right"):
        raise DataError(f"--crop must be center, left or right (got {crop!r})")
    if limit < 1:
        raise DataError(f"{what} context leaves no room for bases ({limit})")
    out: list[list[np.ndarray]] = []
    too_long = []
    for i, s in enumerate(seqs):
        n = len(s)
        if n <= limit:
            out.append([s])
        elif crop is not None:
            a = {"left": 0, "right": n - limit, "center": (n - limit) // 2}[crop]
            out.append([s[a : a + limit]])
        elif windows:
            out.append(split_windows(s, limit))
        else:
            too_long.append(f"{names[i] if names is not None else f'sequence {i + 1}'} ({n} bp)")
    if too_long:
        raise DataError(f"{source}: " + listing(too_long, f"sequences longer than {what} {limit} bases") + f"; {LONG_HELP}")
    return out, sum(1 for s in seqs if len(s) > limit)


def long_policy(crop: str | None, windows: bool) -> str:
    """How long inputs are handled, in words (for reports and metadata)."""
    return f"crop {crop}" if crop else "windows" if windows else "error"


def batch_ids(model: Any, windows: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) input ids with [BOS] (if the tokenizer adds it) and a (B, L) mask of real tokens."""
    tok = model.tokenizer
    bos = bool(tok.prepend_bos)
    width = max(len(w) for w in windows) + int(bos)
    ids = torch.full((len(windows), width), tok.pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.bool)
    for i, w in enumerate(windows):
        w = tok.model_ids(np.asarray(w))  # dnalm base ids -> the tokenizer's (Evo: bytes)
        row = np.concatenate([[tok.bos_id], w]) if bos else np.asarray(w)
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
    crop: str | None = None,
    windows: bool = False,
    progress: bool = False,
    source: str = "input",
    module: str | None = None,
    tap: str | None = None,
) -> Embeddings:
    """Embed sequences (strings or token-id arrays); see the module docstring for layers, ``module`` and
    pooling (``mean``, ``last``, ``per-position`` = ``none``).

    A sequence longer than ``window`` bases (default: the model's context) is an error unless ``crop``
    (center, left or right: keep one window of it) or ``windows`` (tile it, pool over the windows) says
    what to do (:func:`fit_to_context`); ``source`` names the input in that error. ``tap`` is another name
    for ``module``."""
    if pool not in ("mean", "last", "none", "per-position"):
        raise DataError(f"--pool must be mean, last or per-position (got {pool!r})")
    per_position = pool in ("none", "per-position")
    module = module if module is not None else tap  # ``tap`` is the same option under its first name
    caught: list[torch.Tensor] = []
    hook = None
    if module is not None:
        module, target = resolve_module(model, module)
        hook = target.register_forward_hook(lambda m, i, o: caught.append(o[0] if isinstance(o, tuple) else o))

    n_states = count_hidden_states(model)
    if not -n_states <= layer < n_states:
        raise DataError(
            f"--layer {layer} out of range: this model has hidden states 0..{n_states - 1} (or -1..-{n_states})"
        )
    toks = [encode_bytes(s.encode(), f"sequence {i + 1}")[0] if isinstance(s, str) else np.asarray(s, dtype=np.uint8)
            for i, s in enumerate(seqs)]
    ids = list(ids) if ids is not None else [f"seq{i}" for i in range(len(toks))]
    limit = window_bases(model)
    w = limit if window is None else window
    if w < 1 or w > limit:
        raise DataError(f"window {w} must be between 1 and the model's {limit} bases")
    fitted, n_long = fit_to_context(toks, w, crop=crop, windows=windows, names=ids, source=source)
    # every (sequence, window) piece, processed longest-first so batches waste little padding
    pieces = [(si, wi, win) for si, wins in enumerate(fitted) for wi, win in enumerate(wins)]
    n_windows = [len(wins) for wins in fitted]
    used = [int(sum(len(win) for win in wins)) for wins in fitted]  # bases embedded per sequence
    pooled_n = [sum(count_scored(win) for win in wins) for wins in fitted]  # bases mean pooling counts (not N)
    order = sorted(range(len(pieces)), key=lambda k: -len(pieces[k][2]))
    d = model.config.d_model
    piece_out: dict[int, np.ndarray] = {}
    was_training = model.training
    model.eval()
    pbar = bar(total=len(pieces), desc="windows", enabled=progress)
    padded = real_tokens = 0
    try:
        for b0 in range(0, len(order), batch_size):
            part = order[b0 : b0 + batch_size]
            x, mask = batch_ids(model, [pieces[k][2] for k in part])
            x, mask = x.to(model.device), mask.to(model.device)
            padded += int(mask.numel())
            real_tokens += int(mask.sum())
            if module is None:
                h = model(x, output_hidden_states=True).hidden_states[layer].float()  # (B, L, D)
            else:
                caught.clear()
                model(x)
                if not caught or not isinstance(caught[-1], torch.Tensor) or caught[-1].shape[:2] != x.shape:
                    got = tuple(caught[-1].shape) if caught and isinstance(caught[-1], torch.Tensor) else "nothing"
                    raise DataError(f"--module {module}: its output ({got}) is not one vector per input position "
                                    f"{tuple(x.shape)}; choose a module on the full-resolution path")
                h = caught[-1].float()  # (B, L, D')
                d = h.shape[-1]
            real = mask & (x >= UNK)  # bases only
            if per_position:
                for r, k in enumerate(part):
                    piece_out[k] = h[r][real[r]].cpu().numpy()
            else:
                # per-window sums (mean) or last base, N left out; combined across windows below
                counted = mask & model.tokenizer.scored(x)
                summed = pool_hidden(h, counted, "mean") * counted.sum(1, keepdim=True)  # (B, D)
                last = pool_hidden(h, counted, "last")  # (B, D)
                for r, k in enumerate(part):
                    piece_out[k] = (summed[r] if pool == "mean" else last[r]).cpu().numpy()
            pbar.update(len(part))
    finally:
        pbar.close()
        model.train(was_training)
        if hook is not None:
            hook.remove()
    lengths = [int(len(t)) for t in toks]
    meta: dict[str, Any] = {"layer": layer if module is None else None, "pool": pool, "window_bases": w, "dim": d,
                            "long_inputs": long_policy(crop, windows), "longer_than_window": n_long}
    if module is not None:
        meta["module"] = meta["tap"] = module
    meta["batching"] = {"sorted_by_length": True, "batch_size": batch_size,
                        "padded_share": round(1 - real_tokens / padded, 4) if padded else 0.0}
    if windows:
        meta["windowing"] = ("consecutive non-overlapping windows, each with its own [BOS]; context does not cross "
                             "window boundaries")
    if per_position:
        chunks = [piece_out[k] for k in range(len(pieces))]  # pieces are in (sequence, window) order
        offsets = np.concatenate([[0], np.cumsum(used)]).tolist()
        arr = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, d), np.float32)
        meta["offsets"] = offsets
    else:
        arr = np.zeros((len(toks), d), dtype=np.float32)
        for k, (si, wi, win) in enumerate(pieces):
            if pool == "mean":
                arr[si] += piece_out[k] / max(pooled_n[si], 1)
            elif wi == n_windows[si] - 1:
                arr[si] = piece_out[k]
    return Embeddings(arr.astype(np.float32), ids, lengths, n_windows, meta)
