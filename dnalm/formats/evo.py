"""Open and write published Evo 1 and Evo 2 checkpoints; dnalm's StripedHyena 1/2 families compute their math.

Two layouts, one architecture file (``dnalm/models/striped_hyena.py``):

- **Evo 2** (``evo2``, vortex layout, ``arcinstitute/evo2_*``): a folder with the model's YAML config
  (``evo2/configs/*.yml``, read with ``yaml.safe_load``) and one flat ``torch.save`` state dict, either
  ``<name>.pt`` or byte-split pieces ``<name>.pt.part0``, ``.part1``, ... (read in index order as one
  stream, as evo2 concatenates them). Read with ``torch.load(weights_only=True)`` allowing exactly
  ``io.BytesIO`` (the Transformer-Engine ``_extra_state`` blobs); a single ``.pt`` is memory-mapped.
- **Evo 1** (``evo1``, Hugging Face ``togethercomputer/evo-1-*-base`` at revision ``1.1_fix``):
  ``config.json`` with ``model_type: "stripedhyena"`` and ``model.safetensors`` or sharded
  ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``; keys start with ``backbone.``.

The conventions (shared/fixtures/evo{1,2}_*/NOTES.md; every one checked against the reference engines'
float32 outputs by tests/test_evo_parity.py):

- byte tokenizer (``Tokenizer(scheme="byte")``): id = UTF-8 byte, case kept, no [BOS], pad 1 on the right;
- RMSNorm ``x / (rms + eps)``; exact GELU in every MLP (Evo 1) or in block 0 only (Evo 2);
- the 3D projection rows are kept in the file's order: Evo 2 interleaves x2/x1/v (row 3c+s), Evo 1 splits
  per head (``column_split_hyena``); :func:`dnalm.models.striped_hyena.split_streams` reads both;
- short FIRs and the hcs filter store lag 0 last (conv1d order), the hcm filter lag 0 first; dnalm keeps
  lag 0 first, so the first two are flipped on the way in and out;
- Evo 2's Wqkv rows are (head, q/k/v, dim) (``column_split``): permuted to dnalm's [q | k | v];
- RoPE: Evo 1 recomputes ``inv_freq`` in float32; Evo 2 uses the stored bf16-rounded buffer, which must
  equal the bf16 rounding of ``1 / base ** (2j / hd)`` (its precision rule is read from the buffer);
- ``unembed.weight`` and ``*._extra_state`` are ignored, as vortex does without Transformer Engine.

Everything is checked before a model is returned: config fields, key sets per block type, shapes, and
finiteness; errors name the file and the key or field. ``convert`` writes a native checkpoint,
``export_evo2`` / ``export_evo1`` the published layouts (exact round trips).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from dnalm.checkpoint import CheckpointError, atomic_dir, check_finite, load_pretrained, save_pretrained
from dnalm.config import ConfigError
from dnalm.formats.base import CheckpointFormat
from dnalm.models.attention import rope_inv_freq
from dnalm.models.lm import DNALM
from dnalm.models.striped_hyena import StripedHyenaConfig
from dnalm.tokenizer import Tokenizer

__all__ = [
    "EVO1_FORMAT", "EVO2_FORMAT", "is_evo1_folder", "is_evo2_folder", "read_evo1_config", "read_evo2_config",
    "load_evo1", "load_evo2", "export_evo1", "export_evo2", "evo1_state", "evo2_state", "convert",
]  # fmt: skip

EVO2_LAYER_FIELDS = {"hcs_layer_idxs": "se", "hcm_layer_idxs": "mr", "hcl_layer_idxs": "li", "attn_layer_idxs": "attn"}
_PART_RE = re.compile(r"^(?P<stem>.+\.pt)\.part(?P<i>\d+)$")


def byte_tokenizer(max_len: int | None = None) -> Tokenizer:
    """Evo's tokenizer: one id per byte, case kept, no [BOS], right padding with 1."""
    return Tokenizer(scheme="byte", prepend_bos=False, padding_side="right", model_max_length=max_len)


# ------------------------------------------------------------------------------------------ helpers


def _fail(where: Any, msg: str) -> CheckpointError:
    return CheckpointError(f"{where}: {msg}")


def _get(meta: dict, name: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    """``meta[name]`` type-checked (JSON/YAML booleans never pass as numbers); CheckpointError naming it."""
    if name not in meta:
        if default is ...:
            raise _fail(where, f"field {name!r} is missing")
        return default
    value = meta[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, str) and float in kinds:  # YAML 1.1 reads "1e-06" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        want = " or ".join(k.__name__ for k in kinds)
        raise _fail(where, f"field {name!r} must be {want} (got {value!r})")
    return value


def _require(meta: dict, name: str, want: Any, where: str, why: str, default: Any = ...) -> None:
    value = meta.get(name, want if default is ... else default)
    if value != want:
        raise _fail(where, f"field {name!r} is {value!r}; {why}, so the checkpoint is not loaded")


def _check_shape(state: dict, key: str, shape: tuple[int, ...], where: str, field: str) -> torch.Tensor:
    if key not in state:
        raise _fail(where, f"missing key {key!r}")
    t = state[key]
    if tuple(t.shape) != tuple(shape):
        raise _fail(where, f"key {key!r} has shape {tuple(t.shape)} but the config ({field}) gives {tuple(shape)}")
    return t


def _map_norms_and_mlp(out: dict, n: str, g: Any, D: int, F: int) -> None:
    """The block keys Evo 1 and Evo 2 name alike: pre/post norm scales and the gated MLP (l1, l2: D -> F;
    l3: F -> D), read through ``g(key, shape, config_field)`` into ``out`` under the native prefix ``n``."""
    out[n + "norm1.weight"] = g("pre_norm.scale", (D,), "hidden_size")
    out[n + "norm2.weight"] = g("post_norm.scale", (D,), "hidden_size")
    out[n + "mlp.l1.weight"] = g("mlp.l1.weight", (F, D), "inner_mlp_size")
    out[n + "mlp.l2.weight"] = g("mlp.l2.weight", (F, D), "inner_mlp_size")
    out[n + "mlp.l3.weight"] = g("mlp.l3.weight", (D, F), "inner_mlp_size")


def _build(config: StripedHyenaConfig, tokenizer: Tokenizer, native: dict[str, torch.Tensor], where: str,
           dtype: torch.dtype | None, device: Any, compute: str = "float32") -> DNALM:
    """A DNALM holding exactly ``native`` (all keys, checked), without a second copy of the weights.

    ``dtype`` None keeps every tensor in its stored dtype (bf16 as released, poles and residues float32, the
    memory-mapped tensors themselves); a dtype casts all but the filter poles/residues to it (float32: the
    model computes in float32 throughout, at twice a bf16 file's memory). ``compute`` is the model's
    ``DNALM.compute`` (how blocks holding bf16 weights compute: float32 one block at a time, or bf16)."""
    with torch.device("meta"):
        model = DNALM(config, tokenizer=tokenizer)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(native))
    extra = sorted(set(native) - set(expected))
    if missing or extra:  # an internal mapping error: the per-block checks come first
        raise _fail(where, f"mapped state does not fit the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, t in expected.items():
        if tuple(native[k].shape) != tuple(t.shape):
            raise _fail(where, f"{k}: shape {tuple(native[k].shape)} vs model {tuple(t.shape)}")
    check_finite(native, where)
    cast = {}
    for k, t in native.items():
        keep32 = k.endswith(("poles", "residues", "log_poles"))  # filter coefficients stay float32
        want = t.dtype if dtype is None else (torch.float32 if keep32 else dtype)
        cast[k] = t.to(device=device, dtype=want)  # the stored tensor itself (no copy) when nothing changes
    model.load_state_dict(cast, assign=True)
    model.compute = compute
    return model.eval()


# ------------------------------------------------------------------------------------------ Evo 2 files


def _yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file())


def _pt_sources(folder: Path) -> tuple[str, list[Path]]:
    """(description, files) of the state dict: one ``*.pt``, or the ``*.pt.partN`` pieces in order."""
    singles = sorted(p for p in folder.iterdir() if p.suffix == ".pt" and p.is_file())
    parts: dict[str, dict[int, Path]] = {}
    for p in folder.iterdir():
        m = _PART_RE.match(p.name)
        if m and p.is_file():
            parts.setdefault(m["stem"], {})[int(m["i"])] = p
    if len(singles) + len(parts) == 0:
        raise _fail(folder, "no weights (expected one <name>.pt or <name>.pt.part0, .part1, ...)")
    if len(singles) + len(parts) > 1:
        names = [p.name for p in singles] + [f"{s}.part*" for s in parts]
        raise _fail(folder, f"more than one state dict ({', '.join(names)}); keep one per folder")
    if singles:
        return str(singles[0]), singles
    stem, pieces = next(iter(parts.items()))
    gaps = [i for i in range(max(pieces) + 1) if i not in pieces]
    if gaps:
        raise _fail(folder, f"shard {stem}.part{gaps[0]} is missing (found parts {sorted(pieces)}); "
                            "the pieces are one byte stream and cannot be read without it")
    return f"{folder / stem}.part0..{max(pieces)}", [pieces[i] for i in sorted(pieces)]


def is_evo2_folder(path: str | Path) -> bool:
    """A directory holding a YAML config with Evo 2 block lists and a ``.pt`` (or ``.pt.partN``) state dict."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    try:
        ymls = _yaml_files(folder)
        has_pt = any(p.suffix == ".pt" or _PART_RE.match(p.name) for p in folder.iterdir())
    except OSError:
        return False
    if not ymls or not has_pt:
        return False
    try:
        text = ymls[0].read_text(errors="replace")
    except OSError:
        return False
    return "hcl_layer_idxs" in text or "hcs_layer_idxs" in text


class _Pieces(io.RawIOBase):
    """Several files read as one seekable byte stream (evo2's ``.pt.partN`` pieces), without joining them."""

    def __init__(self, files: list[Path]):
        super().__init__()
        self.files = files
        self.sizes = [f.stat().st_size for f in files]
        self.starts = [sum(self.sizes[:i]) for i in range(len(files))]
        self.total = sum(self.sizes)
        self.pos = 0
        self.handles = [open(f, "rb") for f in files]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.total}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        n = 0
        while n < len(view) and self.pos < self.total:
            i = max(j for j, s in enumerate(self.starts) if s <= self.pos)
            fh = self.handles[i]
            fh.seek(self.pos - self.starts[i])
            take = min(len(view) - n, self.sizes[i] - (self.pos - self.starts[i]))
            got = fh.readinto(view[n : n + take])
            if not got:
                break
            n += got
            self.pos += got
        return n

    def close(self) -> None:
        for h in self.handles:
            h.close()
        super().close()


def _is_blob(key: str, value: Any) -> bool:
    return key.endswith("._extra_state") and (isinstance(value, io.BytesIO) or
                                              (isinstance(value, torch.Tensor) and value.dtype == torch.uint8) or value is None)


def read_pt_state(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The Evo 2 state dict (tensors only; ``*._extra_state`` blobs dropped) and where it came from."""
    where, files = _pt_sources(folder)
    try:
        with torch.serialization.safe_globals([io.BytesIO]):
            if len(files) == 1:
                try:
                    state = torch.load(files[0], map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as e:
                    if "mmap" not in str(e):
                        raise
                    state = torch.load(files[0], map_location="cpu", weights_only=True)  # old (non-zip) format
            else:
                with _Pieces(files) as raw, io.BufferedReader(raw, buffer_size=1 << 20) as fh:
                    state = torch.load(fh, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError,
            zipfile.BadZipFile, KeyError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _fail(where, f"cannot be read as a state dict with torch.load(weights_only=True) ({first}); dnalm "
                           "unpickles nothing but tensors and io.BytesIO blobs (a damaged or incomplete file, "
                           "a missing .partN piece, or a pickle that tries to run code)") from None
    if not isinstance(state, dict):
        raise _fail(where, f"holds a {type(state).__name__}, not a state dict of named tensors")
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if not isinstance(k, str):
            raise _fail(where, f"has a key {k!r} that is not a string; not a state dict")
        if _is_blob(k, v):
            continue
        if not isinstance(v, torch.Tensor):
            raise _fail(where, f"entry {k!r} is a {type(v).__name__}, not a tensor; not a state dict")
        out[k] = v
    return out, where


# ------------------------------------------------------------------------------------------ Evo 2 config


def read_evo2_config(path: str | Path) -> tuple[StripedHyenaConfig, bool]:
    """The YAML config of an Evo 2 folder as a StripedHyenaConfig, and its ``use_fp8_input_projections``.

    Every size, pattern and setting comes from the file; settings dnalm cannot reproduce are errors that
    name the field.
    """
    import yaml  # a dependency of dnalm's configs

    folder = Path(path)
    ymls = _yaml_files(folder)
    if len(ymls) != 1:
        raise _fail(folder, f"expected one .yml config, found {len(ymls)}")
    where = str(ymls[0])
    try:
        meta = yaml.safe_load(ymls[0].read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise _fail(where, f"not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise _fail(where, "expected a mapping of settings")
    for name in meta:
        if name.endswith("_layer_idxs") and name not in EVO2_LAYER_FIELDS:
            raise _fail(where, f"field {name!r} names an unknown block type (known: {', '.join(EVO2_LAYER_FIELDS)})")
    n_layer = _get(meta, "num_layers", int, where)
    kinds: dict[int, str] = {}
    for name, kind in EVO2_LAYER_FIELDS.items():
        idxs = _get(meta, name, list, where, [])
        for i in idxs:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n_layer:
                raise _fail(where, f"field {name!r} holds {i!r}, not a block index in 0..{n_layer - 1}")
            if i in kinds:
                raise _fail(where, f"block {i} is in {name!r} and also listed as {kinds[i]!r}")
            kinds[i] = kind
    unset = [i for i in range(n_layer) if i not in kinds]
    if unset:
        raise _fail(where, f"block {unset[0]} has no block type (it is in none of {', '.join(EVO2_LAYER_FIELDS)})")
    why = "dnalm reproduces the released Evo 2 layout only"
    for name, want in (("tie_embeddings", True), ("evo2_style_activations", True), ("column_split_hyena", False),
                       ("hyena_flip_x1x2", False), ("qkv_proj_bias", False), ("mha_out_proj_bias", True),
                       ("hyena_out_proj_bias", True), ("short_filter_bias", False), ("proj_groups", 1),
                       ("interleave", True), ("column_split", True), ("final_norm", True)):
        _require(meta, name, want, where, why)
    act = meta.get("mlp_activation", "gelu")
    if act != "gelu":
        raise _fail(where, f"field 'mlp_activation' is {act!r}; Evo 2 uses the exact GELU in block 0")
    d = _get(meta, "hidden_size", int, where)
    inner = meta.get("inner_mlp_size")
    if inner is None:  # vortex: int(2 * D * 4 / 3) rounded up to inner_size_multiple_of
        mult = _get(meta, "inner_size_multiple_of", int, where, 16) * _get(meta, "model_parallel_size", int, where, 1)
        inner = int(2 * d * 4 / 3)
        inner = mult * ((inner + mult - 1) // mult)
    elif not isinstance(inner, int) or isinstance(inner, bool):
        raise _fail(where, f"field 'inner_mlp_size' must be int (got {inner!r})")
    interp = float(_get(meta, "rotary_emb_scaling_factor", (int, float), where, 1))
    use_interp = _get(meta, "use_interpolated_rotary_pos_emb", bool, where, False)
    fp8 = _get(meta, "use_fp8_input_projections", bool, where, False)
    try:
        config = StripedHyenaConfig(
            version=2, n_layer=n_layer, d_model=d, n_head=_get(meta, "num_attention_heads", int, where),
            max_len=_get(meta, "max_seqlen", int, where, 8192), vocab_size=_get(meta, "vocab_size", int, where),
            layers=[kinds[i] for i in range(n_layer)], mlp_hidden=inner,
            state_size=_get(meta, "state_size", int, where),
            short_filter_len=_get(meta, "short_filter_length", int, where),
            se_len=_get(meta, "hcs_filter_length", int, where, 7), mr_len=_get(meta, "hcm_filter_length", int, where, 128),
            filter_groups=_get(meta, "hcs_filter_groups", int, where, d),
            mr_groups=_get(meta, "hcm_filter_groups", int, where, d),
            rope_base=float(_get(meta, "rotary_emb_base", (int, float), where, 10000)),
            rope_interp=interp if use_interp else 1.0, rope_precision="bfloat16",
            norm_eps=float(_get(meta, "eps", (int, float), where, 1e-6)), tie_embeddings=True,
        )  # fmt: skip
    except ConfigError as e:
        raise _fail(where, str(e)) from None
    if config.mr_len < 128 or config.se_len >= 128:
        raise _fail(where, "vortex picks the hcs/hcm convolution by filter length (FFT with D at >= 128, a direct "
                           f"FIR without D below); hcs_filter_length {config.se_len} / hcm_filter_length "
                           f"{config.mr_len} would change the block math, which dnalm does not reproduce")
    return config, fp8


def _evo2_to_native(state: dict[str, torch.Tensor], config: StripedHyenaConfig, where: str) -> tuple[dict, str]:
    """Evo 2 (vortex) keys -> DNALM keys, checking each block's key set and every shape against the config.
    Returns (native state, RoPE precision read from the stored inv_freq)."""
    D, S, H, V, F = config.d_model, config.state_size, config.n_head, config.vocab_size, config.mlp_hidden
    k, hd = config.short_filter_len, config.d_model // config.n_head
    out: dict[str, torch.Tensor] = {}
    used = {"unembed.weight"}
    out["embed.weight"] = _check_shape(state, "embedding_layer.weight", (V, D), where, "vocab_size, hidden_size")
    out["norm_f.weight"] = _check_shape(state, "norm.scale", (D,), where, "hidden_size")
    used |= {"embedding_layer.weight", "norm.scale"}
    precision = None
    for i, kind in enumerate(config.layers):
        p, n = f"blocks.{i}.", f"backbone.layers.{i}."
        present = {key[len(p):] for key in state if key.startswith(p)}
        common = {"pre_norm.scale", "post_norm.scale", "mlp.l1.weight", "mlp.l2.weight", "mlp.l3.weight"}
        if kind == "attn":
            want = common | {"inner_mha_cls.Wqkv.weight", "inner_mha_cls.out_proj.weight",
                             "inner_mha_cls.out_proj.bias", "inner_mha_cls.rotary_emb.inv_freq"}
        else:
            want = common | {"projections.weight", "filter.short_filter_weight", "out_filter_dense.weight",
                             "out_filter_dense.bias"}
            want |= {"se": {"filter.h"}, "mr": {"filter.h", "filter.D"},
                     "li": {"filter.log_poles", "filter.residues", "filter.D"}}[kind]
        extra = sorted(present - want)
        if extra:
            name = {"se": "hcs", "mr": "hcm", "li": "hcl", "attn": "attention"}[kind]
            raise _fail(where, f"key {p + extra[0]!r} does not belong to a {name} block (the config lists block {i} "
                               f"as {name}); config and tensors disagree")
        g = lambda key, shape, field: _check_shape(state, p + key, shape, where, field)  # noqa: E731
        _map_norms_and_mlp(out, n, g, D, F)
        m = n + "mixer."
        if kind == "attn":
            w = g("inner_mha_cls.Wqkv.weight", (3 * D, D), "hidden_size")
            out[m + "Wqkv.weight"] = w.reshape(H, 3, hd, D).transpose(0, 1).reshape(3 * D, D)  # -> [q | k | v]
            out[m + "out_proj.weight"] = g("inner_mha_cls.out_proj.weight", (D, D), "hidden_size")
            out[m + "out_proj.bias"] = g("inner_mha_cls.out_proj.bias", (D,), "hidden_size")
            inv = g("inner_mha_cls.rotary_emb.inv_freq", (hd // 2,), "hidden_size / num_attention_heads").float()
            found = _rope_precision(inv, hd, config.rope_base)
            if found is None:
                raise _fail(where, f"key {p}inner_mha_cls.rotary_emb.inv_freq does not match rotary_emb_base "
                                   f"{config.rope_base:g} (neither 1/base^(2j/{hd}) in float32 nor its bf16 rounding); "
                                   "config and tensors disagree")
            if precision not in (None, found):
                raise _fail(where, f"key {p}inner_mha_cls.rotary_emb.inv_freq is rounded differently from block 3's")
            precision = found
        else:
            out[m + "in_proj.weight"] = g("projections.weight", (3 * D, D), "hidden_size")
            out[m + "short_filter"] = g("filter.short_filter_weight", (3 * D, 1, k), "short_filter_length")[:, 0].flip(-1)
            out[m + "out_proj.weight"] = g("out_filter_dense.weight", (D, D), "hidden_size")
            out[m + "out_proj.bias"] = g("out_filter_dense.bias", (D,), "hidden_size")
            if kind == "se":
                G = config.filter_groups
                out[m + "h"] = g("filter.h", (G, 1, config.se_len), "hcs_filter_groups, hcs_filter_length")[:, 0].flip(-1)
            elif kind == "mr":
                G = config.mr_groups
                out[m + "h"] = g("filter.h", (G, 1, config.mr_len), "hcm_filter_groups, hcm_filter_length")[:, 0]
                out[m + "skip"] = g("filter.D", (D,), "hidden_size")
            else:
                out[m + "log_poles"] = g("filter.log_poles", (D, S, 1), "hidden_size, state_size")[..., 0]
                out[m + "residues"] = g("filter.residues", (D, S), "hidden_size, state_size")
                out[m + "skip"] = g("filter.D", (D,), "hidden_size")
        used |= {p + key for key in want}
    unknown = sorted(set(state) - used)
    if unknown:
        raise _fail(where, f"unexpected key {unknown[0]!r} (not part of the {config.n_layer}-block model the config describes)")
    return out, precision or "bfloat16"


def _rope_precision(inv: torch.Tensor, hd: int, base: float) -> str | None:
    for precision in ("bfloat16", "float32"):
        if torch.equal(inv, rope_inv_freq(hd, base, precision)):
            return precision
    return None


def load_evo2(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
              fp8: bool | None = None, compute: str = "float32") -> DNALM:
    """Load an Evo 2 (vortex) folder as a DNALM in eval mode; CheckpointError names the file and key/field.

    ``dtype`` None keeps each tensor in its stored dtype (a released bf16 file stays bf16 in memory, memory-
    mapped); ``torch.float32`` converts the weights to float32. ``compute`` ("float32", "auto", "weights"):
    how blocks holding bf16 weights compute (``DNALM.compute``): by default in float32, one block's float32
    copy at a time, so that the model reproduces the reference engines' float32 numbers; "auto" computes in
    bf16 where this CPU is fast in it (what the command line's ``--precision auto`` does).

    ``fp8``: run the Hyena input projections through emulated FP8 E4M3
    (:func:`dnalm.models.striped_hyena.fp8_e4m3`); None follows the config's
    ``use_fp8_input_projections`` unless the environment variable ``DNALM_EVO2_FP8`` is ``0`` / ``off``
    (the switch every command honours). Released configs all ask for it; the 1B, 20B and 40B need it.
    """
    folder = Path(path)
    config, use_fp8 = read_evo2_config(folder)
    state, where = read_pt_state(folder)
    native, precision = _evo2_to_native(state, config, where)
    config.rope_precision = precision
    if fp8 is None:
        fp8 = use_fp8 and os.environ.get("DNALM_EVO2_FP8", "1").strip().lower() not in ("0", "off", "false", "no")
    config.fp8_input_projections = bool(fp8)
    return _build(config, byte_tokenizer(config.max_len), native, where, dtype, device, compute)


# ------------------------------------------------------------------------------------------ Evo 1 files


def is_evo1_folder(path: str | Path) -> bool:
    """A directory whose config.json says ``model_type: "stripedhyena"``."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        meta = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "format" not in meta and meta.get("model_type") == "stripedhyena"


def read_evo1_config(path: str | Path) -> StripedHyenaConfig:
    """An Evo 1 Hugging Face config.json as a StripedHyenaConfig (fields that change the math are checked)."""
    folder = Path(path)
    where = str(folder / "config.json")
    try:
        meta = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise _fail(where, f"not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _fail(where, "expected a JSON object")
    if meta.get("model_type") != "stripedhyena":
        raise _fail(where, f"model_type is {meta.get('model_type')!r}, not 'stripedhyena'")
    n_layer = _get(meta, "num_layers", int, where)
    attn = _get(meta, "attn_layer_idxs", list, where)
    for i in attn:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n_layer:
            raise _fail(where, f"field 'attn_layer_idxs' holds {i!r}, not a block index in 0..{n_layer - 1}")
    hyena = meta.get("hyena_layer_idxs")
    if hyena is not None and sorted(hyena) != [i for i in range(n_layer) if i not in attn]:
        raise _fail(where, "field 'hyena_layer_idxs' is not the complement of 'attn_layer_idxs'; "
                           "a block would have no block type or two")
    why = "dnalm reproduces the released Evo 1 (1.1_fix) layout only"
    for name, want in (("tie_embeddings", True), ("column_split_hyena", True), ("qkv_proj_bias", True),
                       ("mha_out_proj_bias", True), ("short_filter_bias", True), ("final_norm", True),
                       ("proj_groups", 1), ("mlp_activation", "gelu")):
        _require(meta, name, want, where, why)
    interp = float(_get(meta, "rotary_emb_scaling_factor", (int, float), where, 1))
    use_interp = _get(meta, "use_interpolated_rotary_pos_emb", bool, where, False)
    try:
        return StripedHyenaConfig(
            version=1, n_layer=n_layer, d_model=_get(meta, "hidden_size", int, where),
            n_head=_get(meta, "num_attention_heads", int, where), max_len=_get(meta, "max_seqlen", int, where, 8192),
            vocab_size=_get(meta, "vocab_size", int, where),
            layers=["attn" if i in attn else "hyena" for i in range(n_layer)],
            mlp_hidden=_get(meta, "inner_mlp_size", int, where), state_size=_get(meta, "state_size", int, where),
            short_filter_len=_get(meta, "short_filter_length", int, where),
            rope_base=float(_get(meta, "rotary_emb_base", (int, float), where)),
            rope_interp=interp if use_interp else 1.0, rope_precision="float32",
            norm_eps=float(_get(meta, "eps", (int, float), where)), tie_embeddings=True,
        )  # fmt: skip
    except ConfigError as e:
        raise _fail(where, str(e)) from None


def read_safetensors_state(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of ``model.safetensors`` or of every shard an ``*.index.json`` names (memory-mapped)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files, where = [single], str(single)
    elif index.is_file():
        where = str(index)
        try:
            weight_map = json.loads(index.read_text()).get("weight_map")
        except (OSError, ValueError, AttributeError) as e:
            raise _fail(where, f"not a valid index ({e})") from None
        if not isinstance(weight_map, dict):
            raise _fail(where, "no 'weight_map' object")
        files = []
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise _fail(where, f"shard {shard!r} is missing from {folder}")
            files.append(folder / shard)
    else:
        raise _fail(folder, "no weights (expected model.safetensors or model.safetensors.index.json + shards)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt", device="cpu") as fh:
                for key in fh.keys():
                    if key in state:
                        raise _fail(f, f"key {key!r} is also in another shard")
                    state[key] = fh.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise _fail(f, f"cannot read safetensors ({e})") from None
    if index.is_file() and not single.is_file():
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise _fail(where, f"key {missing[0]!r} is listed in the index but in no shard")
    return state, where


def _evo1_to_native(state: dict[str, torch.Tensor], config: StripedHyenaConfig, where: str) -> dict:
    D, S, V, F, k = config.d_model, config.state_size, config.vocab_size, config.mlp_hidden, config.short_filter_len
    hd = D // config.n_head
    if not any(key.startswith("backbone.") for key in state):
        raise _fail(where, "no 'backbone.*' keys; not an Evo 1 Hugging Face checkpoint")
    state = {key[len("backbone."):] if key.startswith("backbone.") else key: t for key, t in state.items()}
    out: dict[str, torch.Tensor] = {}
    used = {"unembed.weight"}
    out["embed.weight"] = _check_shape(state, "embedding_layer.weight", (V, D), where, "vocab_size, hidden_size")
    out["norm_f.weight"] = _check_shape(state, "norm.scale", (D,), where, "hidden_size")
    used |= {"embedding_layer.weight", "norm.scale"}
    for i, kind in enumerate(config.layers):
        p, n = f"blocks.{i}.", f"backbone.layers.{i}."
        present = {key[len(p):] for key in state if key.startswith(p)}
        common = {"pre_norm.scale", "post_norm.scale", "mlp.l1.weight", "mlp.l2.weight", "mlp.l3.weight"}
        if kind == "attn":
            want = common | {f"inner_mha_cls.{a}.{b}" for a in ("Wqkv", "out_proj") for b in ("weight", "bias")}
            want |= {"inner_mha_cls.rotary_emb.inv_freq"}
        else:
            want = common | {"projections.weight", "projections.bias", "filter.short_filter_weight",
                             "filter.short_filter_bias", "filter.poles", "filter.residues", "filter.D",
                             "out_filter_dense.weight", "out_filter_dense.bias"}
        extra = sorted(present - want)
        if extra:
            name = "attention" if kind == "attn" else "Hyena"
            raise _fail(where, f"key {'backbone.' + p + extra[0]!r} does not belong to a {name} block (the config "
                               f"lists block {i} as {name}); config and tensors disagree")
        g = lambda key, shape, field: _check_shape(state, p + key, shape, where, field)  # noqa: E731
        _map_norms_and_mlp(out, n, g, D, F)
        m = n + "mixer."
        if kind == "attn":
            out[m + "Wqkv.weight"] = g("inner_mha_cls.Wqkv.weight", (3 * D, D), "hidden_size")
            out[m + "Wqkv.bias"] = g("inner_mha_cls.Wqkv.bias", (3 * D,), "hidden_size")
            out[m + "out_proj.weight"] = g("inner_mha_cls.out_proj.weight", (D, D), "hidden_size")
            out[m + "out_proj.bias"] = g("inner_mha_cls.out_proj.bias", (D,), "hidden_size")
            if p + "inner_mha_cls.rotary_emb.inv_freq" in state:  # recomputed in float32, as the HF runtime does
                g("inner_mha_cls.rotary_emb.inv_freq", (hd // 2,), "hidden_size / num_attention_heads")
        else:
            out[m + "in_proj.weight"] = g("projections.weight", (3 * D, D), "hidden_size")
            out[m + "in_proj.bias"] = g("projections.bias", (3 * D,), "hidden_size")
            out[m + "short_filter"] = g("filter.short_filter_weight", (3 * D, 1, k), "short_filter_length")[:, 0].flip(-1)
            out[m + "short_bias"] = g("filter.short_filter_bias", (3 * D,), "hidden_size")
            out[m + "poles"] = g("filter.poles", (D, S, 1, 2), "hidden_size, state_size")[:, :, 0]
            out[m + "residues"] = g("filter.residues", (D, S, 1, 2), "hidden_size, state_size")[:, :, 0]
            out[m + "skip"] = g("filter.D", (D,), "hidden_size")
            out[m + "out_proj.weight"] = g("out_filter_dense.weight", (D, D), "hidden_size")
            out[m + "out_proj.bias"] = g("out_filter_dense.bias", (D,), "hidden_size")
        used |= {p + key for key in want}
    unknown = sorted(set(state) - used)
    if unknown:
        raise _fail(where, f"unexpected key {'backbone.' + unknown[0]!r} (not part of the {config.n_layer}-block "
                           "model the config describes)")
    return out


def load_evo1(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
              compute: str = "float32") -> DNALM:
    """Load an Evo 1 Hugging Face folder (revision 1.1_fix) as a DNALM in eval mode. ``dtype`` and
    ``compute`` as in :func:`load_evo2` (None: the stored dtypes, bf16 with float32 poles/residues as released)."""
    folder = Path(path)
    config = read_evo1_config(folder)
    state, where = read_safetensors_state(folder)
    native = _evo1_to_native(state, config, where)
    return _build(config, byte_tokenizer(config.max_len), native, where, dtype, device, compute)


# ------------------------------------------------------------------------------------------ export


def _check_exportable(model: nn.Module, version: int, fmt: str) -> StripedHyenaConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, StripedHyenaConfig) or config.version != version:
        got = f"{getattr(config, 'family', type(config).__name__)!r} (version {getattr(config, 'version', '-')})"
        raise CheckpointError(f"--format {fmt} needs a StripedHyenaConfig(version={version}) model, not {got}")
    if not config.tie_embeddings:
        raise CheckpointError(f"--format {fmt}: the model has an untied LM head; Evo ties it to the embedding")
    if model.tokenizer.scheme != "byte" or config.vocab_size < 256:
        raise CheckpointError(f"--format {fmt}: the model uses dnalm's {model.tokenizer.scheme!r} token ids "
                              f"(vocab {config.vocab_size}); Evo files mean byte ids (vocab >= 256), so its outputs "
                              "would be read against the wrong tokens")
    return config


def evo2_state(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A version-2 DNALM's weights under vortex key names (Wqkv re-permuted, filters re-flipped).

    ``dtype`` None keeps the model's dtypes; e.g. bfloat16 gives the release dtypes (log_poles, residues
    stay float32). ``unembed.weight`` is the embedding tensor itself, as the released files store it.
    """
    config = model.config
    sd = model.state_dict()
    D, H = config.d_model, config.n_head
    hd = D // H

    def c(t: torch.Tensor, keep32: bool = False) -> torch.Tensor:
        return t.detach().to(torch.float32 if keep32 else (dtype or t.dtype))

    out = {"embedding_layer.weight": c(sd["embed.weight"])}
    out["unembed.weight"] = out["embedding_layer.weight"]
    out["norm.scale"] = c(sd["norm_f.weight"])
    for i, kind in enumerate(config.layers):
        p, n = f"blocks.{i}.", f"backbone.layers.{i}."
        m = n + "mixer."
        out[p + "pre_norm.scale"] = c(sd[n + "norm1.weight"])
        out[p + "post_norm.scale"] = c(sd[n + "norm2.weight"])
        for j in (1, 2, 3):
            out[p + f"mlp.l{j}.weight"] = c(sd[n + f"mlp.l{j}.weight"])
        if kind == "attn":
            w = sd[m + "Wqkv.weight"]
            out[p + "inner_mha_cls.Wqkv.weight"] = c(w.reshape(3, H, hd, D).transpose(0, 1).reshape(3 * D, D))
            out[p + "inner_mha_cls.out_proj.weight"] = c(sd[m + "out_proj.weight"])
            out[p + "inner_mha_cls.out_proj.bias"] = c(sd[m + "out_proj.bias"])
            inv = rope_inv_freq(hd, config.rope_base, config.rope_precision if config.rope_precision != "float64"
                                else "float32", device="cpu")
            out[p + "inner_mha_cls.rotary_emb.inv_freq"] = inv.to(torch.bfloat16 if config.rope_precision == "bfloat16"
                                                                  else torch.float32).to(sd[m + "Wqkv.weight"].device)
            continue
        out[p + "projections.weight"] = c(sd[m + "in_proj.weight"])
        out[p + "filter.short_filter_weight"] = c(sd[m + "short_filter"].flip(-1)[:, None, :])
        out[p + "out_filter_dense.weight"] = c(sd[m + "out_proj.weight"])
        out[p + "out_filter_dense.bias"] = c(sd[m + "out_proj.bias"])
        if kind == "se":
            out[p + "filter.h"] = c(sd[m + "h"].flip(-1)[:, None, :])
        elif kind == "mr":
            out[p + "filter.h"] = c(sd[m + "h"][:, None, :])
            out[p + "filter.D"] = c(sd[m + "skip"])
        else:
            out[p + "filter.log_poles"] = c(sd[m + "log_poles"][..., None], True)
            out[p + "filter.residues"] = c(sd[m + "residues"], True)
            out[p + "filter.D"] = c(sd[m + "skip"])
    return out


def _decimal(x: float) -> str:
    """A float as YAML reads it back exactly as a float (plain decimals; "1e-06" would be a string)."""
    import numpy as np

    return np.format_float_positional(float(x), trim="0")


def evo2_yaml(config: StripedHyenaConfig, name: str, fp8: bool = False) -> str:
    """The vortex YAML for ``config`` (keys and spelling of evo2/configs/evo2-*.yml)."""
    idx = {f: [i for i, k in enumerate(config.layers) if k == kind] for f, kind in EVO2_LAYER_FIELDS.items()}
    interp = config.rope_interp != 1.0
    lines = [
        f"model_name: {name}", f"vocab_size: {config.vocab_size}", f"hidden_size: {config.d_model}",
        f"num_filters: {config.d_model}",
        *(f"{f}: [{','.join(map(str, v))}]" for f, v in idx.items()),
        f"hcm_filter_length: {config.mr_len}", f"hcl_filter_groups: {config.d_model}",
        f"hcm_filter_groups: {config.mr_groups}", f"hcs_filter_groups: {config.filter_groups}",
        f"hcs_filter_length: {config.se_len}", f"num_layers: {config.n_layer}",
        f"short_filter_length: {config.short_filter_len}", f"num_attention_heads: {config.n_head}",
        "short_filter_bias: false", f"eps: {_decimal(config.norm_eps)}", f"state_size: {config.state_size}",
        f"rotary_emb_base: {config.rope_base!r}",
        *([f"rotary_emb_scaling_factor: {config.rope_interp!r}", "use_interpolated_rotary_pos_emb: True"] if interp else []),
        "make_vocab_size_divisible_by: 8", "inner_size_multiple_of: 16", f"inner_mlp_size: {config.mlp_hidden}",
        "log_intermediate_values: False", "proj_groups: 1", "hyena_filter_groups: 1", "column_split_hyena: False",
        "column_split: True", "interleave: True", "evo2_style_activations: True", "model_parallel_size: 1",
        "pipe_parallel_size: 1", "tie_embeddings: True", "mha_out_proj_bias: True", "hyena_out_proj_bias: True",
        "hyena_flip_x1x2: False", "qkv_proj_bias: False", f"use_fp8_input_projections: {fp8}",
        f"max_seqlen: {config.max_len}", "max_batch_size: 1", "final_norm: True", "use_flash_attn: False",
        "use_flash_rmsnorm: False", "use_flash_depthwise: False", "use_flashfft: False", "use_laughing_hyena: False",
        "inference_mode: True", "tokenizer_type: CharLevelTokenizer", "prefill_style: fft", "mlp_activation: gelu",
        "print_activations: False",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def export_evo2(model: nn.Module, path: str | Path, dtype: torch.dtype | None = None, name: str | None = None) -> Path:
    """Write a version-2 DNALM as an Evo 2 (vortex) folder: ``config.yml`` + ``<name>.pt``, atomically."""
    config = _check_exportable(model, 2, "evo2")
    if config.rope_precision == "float64":
        raise CheckpointError("--format evo2: the model computes RoPE in float64 (a pre-Evo dnalm checkpoint); "
                              "vortex reads the frequencies from a stored buffer, so it would compute other angles")
    name = name or Path(path).name
    state = evo2_state(model, dtype)
    fp8 = bool(config.fp8_input_projections)
    with atomic_dir(path) as tmp:
        (tmp / "config.yml").write_text(evo2_yaml(config, name, fp8))
        torch.save({k: v.cpu() for k, v in state.items()}, tmp / f"{name}.pt")
    return Path(path)


def evo1_state(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A version-1 DNALM's weights under the Evo 1 Hugging Face key names (``backbone.`` prefix).

    ``dtype`` None keeps the model's dtypes; bfloat16 gives the release dtypes (poles, residues float32).
    """
    config = model.config
    sd = model.state_dict()
    hd = config.d_model // config.n_head

    def c(t: torch.Tensor, keep32: bool = False) -> torch.Tensor:
        return t.detach().to(torch.float32 if keep32 else (dtype or t.dtype))

    b = "backbone."
    out = {b + "embedding_layer.weight": c(sd["embed.weight"]), b + "norm.scale": c(sd["norm_f.weight"])}
    for i, kind in enumerate(config.layers):
        p, n = f"{b}blocks.{i}.", f"backbone.layers.{i}."
        m = n + "mixer."
        out[p + "pre_norm.scale"] = c(sd[n + "norm1.weight"])
        out[p + "post_norm.scale"] = c(sd[n + "norm2.weight"])
        for j in (1, 2, 3):
            out[p + f"mlp.l{j}.weight"] = c(sd[n + f"mlp.l{j}.weight"])
        if kind == "attn":
            for a in ("Wqkv", "out_proj"):
                for s in ("weight", "bias"):
                    out[p + f"inner_mha_cls.{a}.{s}"] = c(sd[m + f"{a}.{s}"])
            inv = rope_inv_freq(hd, config.rope_base, "float32", device="cpu")
            out[p + "inner_mha_cls.rotary_emb.inv_freq"] = inv.to(dtype or torch.bfloat16).to(sd[m + "Wqkv.weight"].device)
            continue
        out[p + "projections.weight"] = c(sd[m + "in_proj.weight"])
        out[p + "projections.bias"] = c(sd[m + "in_proj.bias"])
        out[p + "filter.short_filter_weight"] = c(sd[m + "short_filter"].flip(-1)[:, None, :])
        out[p + "filter.short_filter_bias"] = c(sd[m + "short_bias"])
        out[p + "filter.poles"] = c(sd[m + "poles"][:, :, None, :], True)
        out[p + "filter.residues"] = c(sd[m + "residues"][:, :, None, :], True)
        out[p + "filter.D"] = c(sd[m + "skip"])
        out[p + "out_filter_dense.weight"] = c(sd[m + "out_proj.weight"])
        out[p + "out_filter_dense.bias"] = c(sd[m + "out_proj.bias"])
    return out


def evo1_config_json(config: StripedHyenaConfig) -> dict[str, Any]:
    attn = [i for i, k in enumerate(config.layers) if k == "attn"]
    return {
        "_name_or_path": "dnalm-export", "architectures": ["StripedHyenaModelForCausalLM"],
        "attn_layer_idxs": attn, "column_split": False, "column_split_hyena": True, "eps": config.norm_eps,
        "final_norm": True, "hidden_size": config.d_model, "hyena_filter_groups": 1,
        "hyena_layer_idxs": [i for i in range(config.n_layer) if i not in attn], "inference_mode": False,
        "inner_mlp_size": config.mlp_hidden, "log_intermediate_values": False, "make_vocab_size_divisible_by": 8,
        "max_seqlen": config.max_len, "mha_out_proj_bias": True, "mlp_activation": "gelu", "model_parallel_size": 1,
        "model_type": "stripedhyena", "num_attention_heads": config.n_head, "num_filters": config.d_model,
        "num_layers": config.n_layer, "pipe_parallel_size": 1, "prefill_style": "fft", "proj_groups": 1,
        "qkv_proj_bias": True, "rotary_emb_base": config.rope_base, "rotary_emb_scaling_factor": config.rope_interp,
        "short_filter_bias": True, "short_filter_length": config.short_filter_len, "smeared_gqa": False,
        "split_k0": True, "state_size": config.state_size, "tie_embeddings": True, "torch_dtype": "bfloat16",
        "use_cache": True, "use_flash_attn": True, "use_flash_depthwise": False, "use_flash_rmsnorm": False,
        "use_flashfft": False, "use_interpolated_rotary_pos_emb": config.rope_interp != 1.0,
        "vocab_size": config.vocab_size,
    }  # fmt: skip


def export_evo1(model: nn.Module, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write a version-1 DNALM as an Evo 1 Hugging Face folder (config.json + model.safetensors), atomically."""
    config = _check_exportable(model, 1, "evo1")
    if config.rope_precision != "float32":
        raise CheckpointError(f"--format evo1: the model computes RoPE in {config.rope_precision}; the Evo 1 "
                              "runtime recomputes the frequencies in float32, so it would compute other angles")
    state = evo1_state(model, dtype)
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(evo1_config_json(config), indent=2, sort_keys=True) + "\n")
        save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
    return Path(path)


# ------------------------------------------------------------------------------------------ convert / formats


def convert(src: str | Path, dst: str | Path, *, verify: bool = True, **_: Any) -> tuple[DNALM, float | None]:
    """Write the Evo 1 or Evo 2 folder ``src`` as a native checkpoint ``dst`` (atomically); with ``verify``
    the written checkpoint is read back and compared on a real-DNA probe (the max abs logit difference,
    which is 0 for an exact round trip)."""
    model = load_evo2(src) if is_evo2_folder(src) else load_evo1(src)
    fmt = "evo2" if is_evo2_folder(src) else "evo1"
    save_pretrained(model, dst, extra={"info": {"converted_from": str(src), "source_format": fmt}})
    diff = None
    if verify:
        again = load_pretrained(dst)
        ids = torch.tensor([model.tokenizer.encode(_PROBE)[0]], dtype=torch.long)
        with torch.no_grad():
            diff = float((model(ids).logits - again(ids).logits).abs().max())
    return model, diff


# 64 bases of phage lambda (NC_001416.1, 0-based [1000:1064]), the probe of ``convert(verify=True)``
_PROBE = "GCAGCGCAACACCCTTATCTGGTTGCCGACGGATGGTGATGCCGAGAACTTTATGAAAACCCAC"


EVO2_FORMAT = CheckpointFormat(
    name="evo2",
    description="Evo 2 checkpoint in the vortex layout (config .yml + <name>.pt or .pt.partN pieces)",
    detect=is_evo2_folder,
    load=lambda path, device="cpu", dtype=None: load_evo2(path, device, dtype),
    stored_dtype=True,
    convert=convert,
    export=export_evo2,
    read_config=lambda path: read_evo2_config(path)[0],
)

EVO1_FORMAT = CheckpointFormat(
    name="evo1",
    description="Evo 1 Hugging Face folder (togethercomputer/evo-1-*-base, revision 1.1_fix)",
    detect=is_evo1_folder,
    load=lambda path, device="cpu", dtype=None: load_evo1(path, device, dtype),
    stored_dtype=True,
    convert=convert,
    export=export_evo1,
    read_config=read_evo1_config,
)
