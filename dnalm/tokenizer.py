"""Nucleotide tokenizer: one token per base, a separate case (repeat) mask, reverse complement.

Conventions (owned here, stated once):

- Vocabulary. dnalm uses HyenaDNA's character vocabulary so that published HyenaDNA checkpoints and
  native models share token ids: [CLS]=0, [SEP]=1, [BOS]=2, [MASK]=3, [PAD]=4, [RESERVED]=5, [UNK]=6,
  A=7, C=8, G=9, T=10, N=11. Models pad the embedding table to 16 rows (or more, e.g. 512 for the
  Evo presets); the extra rows are never produced by the tokenizer.
- Case. Native models see upper-case bases only. Lower-case input (soft-masked repeats) is upper-cased
  for the model and reported as a separate boolean mask (True = lower case) that only the loss uses.
  Imported HyenaDNA checkpoints instead map lower case (and every character other than upper-case
  A C G T N, IUPAC codes included) to [UNK] (``lowercase="unk"``), as their reference tokenizer does.
- IUPAC ambiguity codes (R Y S W K M B D H V, any case) become N. Any other character is an input error
  that names the position.
- Scoring and training prepend [BOS] so that the first base of a window is predicted too.
- N is never a target. Likelihoods, bits/base, perplexity, deltas and pooled features count only A/C/G/T
  (and [UNK], which stands for lower case and IUPAC codes in imported HyenaDNA models); training gives N
  targets weight 0, as padding (:func:`scored`).
- Byte scheme (``Tokenizer(scheme="byte")``, Evo 1 / Evo 2 checkpoints): one token per UTF-8 byte, id =
  byte value (A 65, C 67, ..., a 97, ...), case kept (soft-masked bases get their own ids), nothing
  upper-cased or validated, no [BOS] unless asked (then id 0, Evo's EOD), padding id 1 on the right.
  Tools that work on dnalm base ids map them with :meth:`Tokenizer.model_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

CLS, SEP, BOS, MASK, PAD, RESERVED, UNK = 0, 1, 2, 3, 4, 5, 6
A, C, G, T, N = 7, 8, 9, 10, 11
SPECIAL_TOKENS = ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]"]
BASES = "ACGTN"
VOCAB = SPECIAL_TOKENS + list(BASES)  # id -> string
VOCAB_SIZE = len(VOCAB)  # 12 real ids; models pad to a multiple of 8

BYTE_BOS, BYTE_PAD = 0, 1  # byte scheme (Evo): EOD/BOS 0, pad 1

IUPAC_AMBIGUOUS = "RYSWKMBDHVU"  # U (RNA) is not ambiguous, but has no DNA token: it becomes N too


def _build_tables() -> tuple[np.ndarray, np.ndarray]:
    """Byte -> token id (255 = invalid) and byte -> is-lower-case tables."""
    to_id = np.full(256, 255, dtype=np.uint8)
    is_lower = np.zeros(256, dtype=bool)
    for i, base in enumerate(BASES):
        to_id[ord(base)] = A + i
        to_id[ord(base.lower())] = A + i
        is_lower[ord(base.lower())] = True
    for code in IUPAC_AMBIGUOUS:
        to_id[ord(code)] = N
        to_id[ord(code.lower())] = N
        is_lower[ord(code.lower())] = True
    return to_id, is_lower


BYTE_TO_ID, BYTE_IS_LOWER = _build_tables()

# HyenaDNA checkpoints: upper-case A C G T N map to their ids, every other byte (lower case, IUPAC
# codes, anything else) to [UNK], as the reference CharacterTokenizer does.
HF_BYTE_TO_ID = np.full(256, UNK, dtype=np.uint8)
HF_BYTE_TO_ID[[ord(b) for b in BASES]] = [A + i for i in range(len(BASES))]

# Complement on token ids (specials map to themselves, N to N).
COMPLEMENT_ID = np.arange(256, dtype=np.uint8)
COMPLEMENT_ID[[A, C, G, T]] = [T, G, C, A]
ID_TO_BYTE = np.frombuffer(b"".join(s.encode() if len(s) == 1 else b"?" for s in VOCAB), dtype=np.uint8)


def scored(ids):
    """True where a token id is a scored base: A/C/G/T or [UNK], never N or a special token. Works on numpy
    arrays and torch tensors alike."""
    return (ids >= UNK) & (ids != N)


class InvalidSequenceError(ValueError):
    """A character that is not a nucleotide or an IUPAC code."""


def encode_bytes(data: bytes | np.ndarray, name: str = "sequence") -> tuple[np.ndarray, np.ndarray]:
    """Bytes of bases -> (uint8 token ids, bool lower-case mask).

    Raises InvalidSequenceError naming ``name`` and the position of the first bad character, 1-based as
    every position in a message for people (see :mod:`dnalm.data.tables`).
    """
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    ids = BYTE_TO_ID[raw]
    bad = np.flatnonzero(ids == 255)
    if bad.size:
        pos = int(bad[0])
        ch = chr(int(raw[pos]))
        raise InvalidSequenceError(
            f"{name}: invalid character {ch!r} at position {pos + 1} (1-based); expected A/C/G/T/N or an IUPAC code"
        )
    return ids, BYTE_IS_LOWER[raw]


def decode(ids: np.ndarray | torch.Tensor | list[int], lower: np.ndarray | None = None) -> str:
    """Token ids -> string (special tokens become '?'); ``lower`` restores soft-masking."""
    arr = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
    if np.any((arr < 0) | (arr >= len(ID_TO_BYTE))):
        raise ValueError("decode: token id outside the nucleotide vocabulary")
    out = ID_TO_BYTE[arr].copy()
    if lower is not None:
        out[np.asarray(lower, dtype=bool)] += 32
    return out.tobytes().decode()


def reverse_complement_ids(ids: np.ndarray) -> np.ndarray:
    """Reverse complement of token ids along the last axis (N stays N)."""
    return COMPLEMENT_ID[ids][..., ::-1].copy()


@dataclass
class Tokenizer:
    """Turns DNA strings into model inputs.

    Args:
        lowercase: "upper" (native: upper-case the base and keep a mask) or "unk" (HyenaDNA checkpoints:
            lower-case characters become [UNK]).
        append_sep: append [SEP] after each sequence (HyenaDNA checkpoints do; native models do not).
        prepend_bos: prepend [BOS] so the first base is scored (native models do).
        padding_side: where batches are padded; "left" keeps the last token aligned for causal models.
        model_max_length: longest token sequence the model accepts (None = unlimited).
    """

    lowercase: Literal["upper", "unk"] = "upper"
    append_sep: bool = False
    prepend_bos: bool = True
    padding_side: Literal["left", "right"] = "left"
    model_max_length: int | None = None
    scheme: Literal["dnalm", "byte"] = "dnalm"

    pad_id: int = PAD
    bos_id: int = BOS
    sep_id: int = SEP

    def __post_init__(self) -> None:
        if self.scheme not in ("dnalm", "byte"):
            raise ValueError(f"tokenizer scheme must be 'dnalm' or 'byte' (got {self.scheme!r})")
        if self.scheme == "byte":
            self.pad_id, self.bos_id, self.sep_id = BYTE_PAD, BYTE_BOS, BYTE_BOS

    @property
    def scored_min_id(self) -> int:
        """Ids at or above this are sequence (scored) tokens: bases and [UNK], or any byte >= 2."""
        return 2 if self.scheme == "byte" else UNK

    def scored(self, ids):
        """True at this tokenizer's ids that likelihoods and pooling count: A/C/G/T (either case in the byte
        scheme) and [UNK]; never N, an IUPAC code, a special token or padding. numpy or torch alike."""
        if self.scheme == "byte":
            folded = ids | 32  # lower case
            return (folded == 97) | (folded == 99) | (folded == 103) | (folded == 116)
        return scored(ids)

    def model_ids(self, ids: np.ndarray, lower: np.ndarray | None = None) -> np.ndarray:
        """dnalm base ids (A..N, as FASTA readers give them) and their case mask -> this tokenizer's ids.

        "dnalm" scheme: unchanged, except lower case -> [UNK] for ``lowercase="unk"``; "byte": the base's
        byte, lower case where ``lower`` says so. Specials are not added.
        """
        ids = np.asarray(ids)
        if self.scheme == "byte":
            out = ID_TO_BYTE[np.clip(ids.astype(np.int64), 0, len(ID_TO_BYTE) - 1)].astype(np.int64)
            if lower is not None:
                out = np.where(np.asarray(lower, dtype=bool), out + 32, out)
            return out
        if self.lowercase == "unk" and lower is not None:
            return np.where(np.asarray(lower, dtype=bool), UNK, ids)
        return ids

    def decode(self, ids: np.ndarray | torch.Tensor | list[int]) -> str:
        """Token ids -> string: the bytes themselves for the byte scheme, else :func:`decode`."""
        if self.scheme == "byte":
            arr = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
            return bytes(np.clip(arr, 0, 255).astype(np.uint8)).decode("utf-8", errors="replace")
        return decode(ids)

    def encode(self, seq: str, name: str = "sequence") -> tuple[list[int], list[bool]]:
        """One sequence -> (token ids, lower-case flags), specials included (flags False there)."""
        if self.scheme == "byte":  # Evo: the UTF-8 bytes themselves, case kept
            raw = np.frombuffer(seq.encode("utf-8"), dtype=np.uint8)
            ids, lower = raw.astype(np.int64), (raw >= 97) & (raw <= 122)
        elif self.lowercase == "unk":  # HyenaDNA's character tokenizer: only A C G T N, case-sensitive
            raw = np.frombuffer(seq.encode("utf-8"), dtype=np.uint8)
            ids = HF_BYTE_TO_ID[raw]
            lower = np.zeros(len(ids), dtype=bool)
        else:
            ids, lower = encode_bytes(seq.encode("ascii", errors="replace"), name)
        out, flags = ids.tolist(), lower.tolist()
        if self.prepend_bos:
            out, flags = [self.bos_id] + out, [False] + flags
        if self.append_sep:
            out, flags = out + [self.sep_id], flags + [False]
        if self.model_max_length is not None and len(out) > self.model_max_length:
            raise ValueError(
                f"{name}: {len(out)} tokens exceed the model's maximum of {self.model_max_length}; "
                "shorten the input or score it in windows"
            )
        return out, flags

    def batch(self, seqs: list[str], names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Encode and pad a batch: input_ids (B, L) int64, lower (B, L) bool, attention_mask (B, L) bool."""
        names = names or [f"sequence {i}" for i in range(len(seqs))]
        enc = [self.encode(s, n) for s, n in zip(seqs, names)]
        width = max(len(ids) for ids, _ in enc)
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        lower = torch.zeros((len(seqs), width), dtype=torch.bool)
        mask = torch.zeros((len(seqs), width), dtype=torch.bool)
        for i, (ids, flags) in enumerate(enc):
            sl = slice(width - len(ids), width) if self.padding_side == "left" else slice(0, len(ids))
            input_ids[i, sl] = torch.tensor(ids, dtype=torch.long)
            lower[i, sl] = torch.tensor(flags, dtype=torch.bool)
            mask[i, sl] = True
        return {"input_ids": input_ids, "lower": lower, "attention_mask": mask}

    def to_dict(self) -> dict:
        extra = {"scheme": self.scheme} if self.scheme != "dnalm" else {}
        return {
            **extra,
            "lowercase": self.lowercase,
            "append_sep": self.append_sep,
            "prepend_bos": self.prepend_bos,
            "padding_side": self.padding_side,
            "model_max_length": self.model_max_length,
        }
