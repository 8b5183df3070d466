"""Evo 1 / Evo 2 files in and out (dnalm/formats/evo.py): .pt.partN pieces, exact round trips through
``dnalm convert`` and ``dnalm export --format evo2|evo1``, preset sizes against the released files, and one
clear error (and no output) for each kind of bad file."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dnalm
from dnalm.checkpoint import CheckpointError
from dnalm.cli import main
from dnalm.formats.evo import evo1_state, evo2_state, export_evo1, export_evo2, load_evo1, load_evo2, read_pt_state
from dnalm.models import get_preset
from dnalm.models.lm import DNALM

DATA = Path(__file__).parent / "data" / "evo"
PROBE = "GCAGCGCAACACCCTTATCTGGTTGCCGACGGATGGTGATGCCGAGAACTTTATGAAAACCCACtgcagaatNNacgt"


def _logits(model, seq: str = PROBE) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([model.tokenizer.encode(seq)[0]])).logits


def _copy(src: str, tmp_path: Path) -> Path:
    dst = tmp_path / src
    shutil.copytree(DATA / src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def _raw_pt(path: Path) -> dict:
    with torch.serialization.safe_globals([io.BytesIO]):
        return torch.load(path, weights_only=True)


# ------------------------------------------------------------------------------------------ pieces, round trips


def test_pt_parts_read_as_one_stream(tmp_path):
    folder = _copy("evo2_tiny", tmp_path)
    data = (folder / "tiny.pt").read_bytes()
    (folder / "tiny.pt").unlink()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    for i in range(3):
        (folder / f"tiny.pt.part{i}").write_bytes(data[cut[i] : cut[i + 1]])
    assert torch.equal(_logits(dnalm.load(folder)), _logits(load_evo2(DATA / "evo2_tiny")))


def test_extra_state_blobs_and_unembed_are_ignored():
    raw = _raw_pt(DATA / "evo2_tiny" / "tiny.pt")
    blobs = [k for k, v in raw.items() if isinstance(v, io.BytesIO)]
    assert blobs and all(k.endswith("projections._extra_state") for k in blobs)
    assert raw["unembed.weight"].data_ptr() == raw["embedding_layer.weight"].data_ptr()
    state, _ = read_pt_state(DATA / "evo2_tiny")
    assert not any(k.endswith("_extra_state") for k in state)


def test_evo2_export_round_trip_is_exact(tmp_path):
    model = load_evo2(DATA / "evo2_tiny")
    export_evo2(model, tmp_path / "out", name="tiny")
    raw, again = _raw_pt(DATA / "evo2_tiny" / "tiny.pt"), _raw_pt(tmp_path / "out" / "tiny.pt")
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    assert sorted(tensors) == sorted(again)
    for k, v in tensors.items():
        assert torch.equal(again[k], v), k  # Wqkv permutation and filter flips undone exactly
    assert again["unembed.weight"].data_ptr() == again["embedding_layer.weight"].data_ptr()
    assert torch.equal(_logits(load_evo2(tmp_path / "out")), _logits(model))


def test_evo1_export_round_trip_is_exact(tmp_path):
    model = load_evo1(DATA / "evo1_tiny")
    export_evo1(model, tmp_path / "out", dtype=torch.bfloat16)  # the release dtypes: bf16, poles/residues fp32
    orig, again = load_file(str(DATA / "evo1_tiny" / "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(orig) == sorted(again)
    for k, v in orig.items():
        assert again[k].dtype == v.dtype and torch.equal(again[k], v), k
    assert torch.equal(_logits(load_evo1(tmp_path / "out")), _logits(model))


@pytest.mark.parametrize("src,fmt", [("evo2_tiny", "evo2"), ("evo1_131k", "evo1")])
def test_cli_convert_and_export_round_trip(src, fmt, tmp_path, capsys):
    assert main(["convert", str(DATA / src), "--out", str(tmp_path / "native")]) == 0
    assert "differ from the import by 0 " in capsys.readouterr().out
    native = dnalm.load(tmp_path / "native")
    assert native.tokenizer.scheme == "byte"
    assert main(["export", str(tmp_path / "native"), "--format", fmt, "--out", str(tmp_path / "back")]) == 0
    ref = _logits(dnalm.load(DATA / src))
    assert torch.equal(_logits(native), ref)
    assert torch.equal(_logits(dnalm.load(tmp_path / "back")), ref)


def test_native_model_trained_with_dnalm_ids_is_not_exported_as_evo(tmp_path, capsys):
    model = DNALM(get_preset("striped-hyena2-tiny"))
    with pytest.raises(CheckpointError, match="byte ids"):
        export_evo2(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------ presets


def test_evo1_131k_preset_matches_the_released_shards():
    with torch.device("meta"):
        model = DNALM(get_preset("evo-1-131k"))
    state = evo1_state(model, dtype=torch.bfloat16)
    assert len(state) == 438
    assert sum(t.numel() * t.element_size() for t in state.values()) == 12_913_164_672
    assert sum(t.numel() for k, t in state.items() if "inv_freq" not in k) == 6_452_781_056


@pytest.mark.parametrize("name,tensors", [("evo2-20b", 261), ("evo2-7b", 32 + 9 * 10 + 9 * 11 + 9 * 12 + 5 * 9 - 32 + 3),
                                          ("evo2-40b", 50 + 14 * 10 + 14 * 11 + 14 * 12 + 8 * 9 - 50 + 3)])
def test_evo2_presets_match_released_tensor_counts(name, tensors):
    """Per block: hcs 10, hcm 11, hcl 12, mha 9 tensors, plus embedding, unembed and final norm (20B: 261,
    as a public inspection of the released file found). Bytes: about 2 per parameter (the 40B file is
    82.3 GB for 41.1 B parameters)."""
    with torch.device("meta"):
        model = DNALM(get_preset(name))
    state = evo2_state(model, dtype=torch.bfloat16)
    assert len(state) == tensors
    if name == "evo2-40b":
        unique = {id(t): t for t in state.values()}.values()  # unembed shares the embedding's storage
        total = sum(t.numel() * t.element_size() for t in unique)
        assert 82.0e9 < total < 82.3e9  # the merged .pt (82,253,491,694 bytes) adds pickle and zip overhead


# ------------------------------------------------------------------------------------------ bad files


def _convert_fails(src: Path, tmp_path: Path, capsys, match: str) -> None:
    out = tmp_path / "converted"
    rc = main(["convert", str(src), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and match in err, err
    assert len(err.strip().splitlines()) == 1, err  # one clear line
    assert not out.exists() and not list(tmp_path.glob("converted*"))  # nothing half-written


def test_pt_that_is_not_a_state_dict(tmp_path, capsys):
    folder = _copy("evo2_tiny", tmp_path)
    torch.save([torch.zeros(3)], folder / "tiny.pt")
    _convert_fails(folder, tmp_path, capsys, "holds a list, not a state dict")


def test_missing_part(tmp_path, capsys):
    folder = _copy("evo2_tiny", tmp_path)
    data = (folder / "tiny.pt").read_bytes()
    (folder / "tiny.pt").unlink()
    (folder / "tiny.pt.part0").write_bytes(data[:1000])
    (folder / "tiny.pt.part2").write_bytes(data[2000:])
    _convert_fails(folder, tmp_path, capsys, "shard tiny.pt.part1 is missing")


def test_truncated_last_part(tmp_path, capsys):
    folder = _copy("evo2_tiny", tmp_path)
    data = (folder / "tiny.pt").read_bytes()
    (folder / "tiny.pt").unlink()
    (folder / "tiny.pt.part0").write_bytes(data[: len(data) // 2])  # part1 never arrived
    _convert_fails(folder, tmp_path, capsys, "cannot be read as a state dict")


def test_missing_safetensors_shard(tmp_path, capsys):
    folder = _copy("evo1_131k", tmp_path)
    (folder / "model-00002-of-00002.safetensors").unlink()
    _convert_fails(folder, tmp_path, capsys, "shard 'model-00002-of-00002.safetensors' is missing")


def test_config_disagreeing_with_tensors(tmp_path, capsys):
    folder = _copy("evo2_tiny", tmp_path)
    cfg = folder / "config.yml"
    cfg.write_text(cfg.read_text().replace("inner_mlp_size: 80", "inner_mlp_size: 96"))
    _convert_fails(folder, tmp_path, capsys, "'blocks.0.mlp.l1.weight' has shape (80, 64) but the config (inner_mlp_size)")
    folder = _copy("evo1_tiny", tmp_path / "b")
    meta = json.loads((folder / "config.json").read_text())
    meta["attn_layer_idxs"], meta["hyena_layer_idxs"] = [1, 5], [0, 2, 3, 4]
    (folder / "config.json").write_text(json.dumps(meta))
    _convert_fails(folder, tmp_path / "b", capsys, "does not belong to a attention block")


def test_unknown_block_type(tmp_path, capsys):
    folder = _copy("evo2_tiny", tmp_path)
    cfg = folder / "config.yml"
    cfg.write_text(cfg.read_text().replace("hcl_layer_idxs: [2,6]", "hcl_layer_idxs: [2]\nhcx_layer_idxs: [6]"))
    _convert_fails(folder, tmp_path, capsys, "field 'hcx_layer_idxs' names an unknown block type")
    cfg.write_text(cfg.read_text().replace("hcx_layer_idxs: [6]\n", ""))
    _convert_fails(folder, tmp_path, capsys, "block 6 has no block type")


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch " + str(MARKER),))


MARKER = Path("/nonexistent")


def test_pickle_that_tries_to_run_code(tmp_path, capsys):
    global MARKER
    MARKER = tmp_path / "pwned"
    folder = _copy("evo2_tiny", tmp_path)
    state = _raw_pt(folder / "tiny.pt")
    state["blocks.0.projections._extra_state"] = _Exploit()
    torch.save(state, folder / "tiny.pt")
    _convert_fails(folder, tmp_path, capsys, "cannot be read as a state dict with torch.load(weights_only=True)")
    assert not MARKER.exists()


def test_non_finite_weights_and_unexpected_keys(tmp_path, capsys):
    folder = _copy("evo2_tiny", tmp_path)
    state = _raw_pt(folder / "tiny.pt")
    state["blocks.9.mlp.l1.weight"] = torch.zeros(2)
    torch.save(state, folder / "tiny.pt")
    _convert_fails(folder, tmp_path, capsys, "unexpected key 'blocks.9.mlp.l1.weight'")


def test_lm_training_from_a_byte_token_model_keeps_its_tokenizer(tmp_path):
    """dnalm train continuing an Evo model takes its byte tokenizer, so the trainer feeds it bytes
    (dnalm.train.evaluate.lm_inputs; tests/test_lora_evo.py trains one end to end)."""
    from dnalm.checkpoint import save_pretrained
    from dnalm.train.trainer import _load_init_weights

    model = load_evo2(DATA / "evo2_tiny")
    save_pretrained(model, tmp_path / "native")
    dtype, tok = _load_init_weights(DNALM(model.config), tmp_path / "native")
    assert tok.scheme == "byte" and dtype == torch.float32
