"""Generation (dnalm/generation.py, ``DNALM.generate``, ``dnalm generate``): for every family the logits of
prefill + step-by-step decoding equal a full forward pass over the same real E. coli sequence; sampling
rules (greedy, top-k, top-p, alphabet, seeds); the recurrent path against recompute-the-prefix; the CLI."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

import dnalm
from dnalm.checkpoint import save_pretrained
from dnalm.cli import main
from dnalm.models.hyena import HyenaConfig
from dnalm.models.striped_hyena import StripedHyenaConfig
from dnalm.models.transformer import TransformerConfig
from dnalm.generation import GenerationError, generate, prefill_logits, sample_next, step_logits, supports_recurrent
from dnalm.models.lm import DNALM
from dnalm.tokenizer import BOS
from realdata import ecoli_ids

GENOME = Path(__file__).resolve().parents[1] / "dnalm" / "resources" / "ecoli_k12_mg1655.fa.gz"


def ecoli(n: int, start: int = 0) -> str:
    """Bases [start, start+n) of E. coli K-12 MG1655 (NC_000913.3, the package's embedded genome)."""
    seq = b""
    with gzip.open(GENOME, "rb") as fh:
        fh.readline()  # header
        while len(seq) < start + n:
            seq += fh.readline().strip()
    return seq[start : start + n].decode()


FAMILIES = {
    "striped_hyena_v1": lambda: StripedHyenaConfig(
        version=1, n_layer=3, layers=["hyena", "attn", "hyena"], d_model=32, n_head=4, mlp_hidden=64, max_len=300
    ),
    "striped_hyena_v2": lambda: StripedHyenaConfig(
        version=2, n_layer=4, layers=["se", "mr", "li", "attn"], d_model=32, n_head=4, mlp_hidden=64, max_len=300,
        filter_groups=4, mr_len=16,
    ),
    "hyena": lambda: HyenaConfig(n_layer=2, d_model=32, l_max=300, filter_order=16),
    "transformer": lambda: TransformerConfig(n_layer=2, d_model=32, n_head=4, max_len=300),
}


def make_model(family: str, seed: int = 0) -> DNALM:
    """A small model of ``family`` with noise on every weight, so that mixers and states matter (GPT-2 init
    alone leaves them nearly invisible next to the tied embedding). Modal poles are left alone: noise
    could push them outside the unit circle."""
    torch.manual_seed(seed)
    model = DNALM(FAMILIES[family]())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("poles"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("prompt_len", [1, 70])
def test_step_logits_match_full_forward(family, prompt_len):
    model = make_model(family)
    assert supports_recurrent(model)
    ids = torch.cat([torch.tensor([BOS]), ecoli_ids(119, 3000)])[None].repeat(2, 1)  # (2, 120)
    ids[1, 90:] = 7 + (ids[1, 90:] - 7 + 1) % 4  # the second row diverges late
    with torch.no_grad():
        full = model(ids).logits  # (2, 200, V)
        logits, state = prefill_logits(model, ids[:, :prompt_len])
        got = [logits]
        for t in range(prompt_len, ids.shape[1]):
            logits, state = step_logits(model, ids[:, t], state)
            got.append(logits[:, None])
    got = torch.cat(got, dim=1)
    assert got.dtype == torch.float32 and got.shape == full.shape
    torch.testing.assert_close(got, full, rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_state_carries_long_range_information(family):
    """Changing base 5 changes the logits 110 positions later: the parity above is not a local-only check."""
    model = make_model(family)
    ids = torch.cat([torch.tensor([BOS]), ecoli_ids(119, 3000)])[None]
    changed = ids.clone()
    changed[0, 5] = 7 + (changed[0, 5] - 7 + 2) % 4
    with torch.no_grad():
        a, sa = prefill_logits(model, ids[:, :100])
        b, sb = prefill_logits(model, changed[:, :100])
        for t in range(100, 115):
            a, sa = step_logits(model, ids[:, t], sa)
            b, sb = step_logits(model, changed[:, t], sb)
    assert (a - b).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------ sampling


def test_greedy_and_top_k_1_take_the_argmax():
    logits = torch.randn(5, 16)
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next(logits, temperature=1.3, top_k=1, generator=g), logits.argmax(-1))
    allowed = torch.zeros(16, dtype=torch.bool)
    allowed[7:11] = True
    assert torch.equal(sample_next(logits, temperature=0, allowed=allowed), logits[:, 7:11].argmax(-1) + 7)


def test_top_k_and_top_p_restrict_the_support():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])  # A C G T
    logits = torch.full((4000, 16), -30.0)
    logits[:, 7:11] = probs.log()
    g = torch.Generator().manual_seed(1)
    drawn = sample_next(logits, top_k=2, generator=g)
    assert set(drawn.tolist()) == {7, 8}
    frac_a = (drawn == 7).float().mean().item()
    assert abs(frac_a - 0.5 / 0.8) < 0.03  # renormalised over the kept two
    # nucleus: a token is kept while the mass of the tokens before it is < p
    assert set(sample_next(logits, top_p=0.7, generator=g).tolist()) == {7, 8}
    assert set(sample_next(logits, top_p=0.81, generator=g).tolist()) == {7, 8, 9}
    assert set(sample_next(logits, top_p=0.01, generator=g).tolist()) == {7}
    drawn = sample_next(logits, generator=g)  # plain sampling follows the softmax
    freq = torch.bincount(drawn - 7, minlength=4).float() / len(drawn)
    torch.testing.assert_close(freq, probs, rtol=0, atol=0.03)


def test_seeded_generation_is_reproducible_and_alphabet_is_respected():
    model = make_model("striped_hyena_v2")
    prompt = ecoli(40)
    a = generate(model, prompt, 40, seed=3)
    assert a == generate(model, prompt, 40, seed=3) and a != generate(model, prompt, 40, seed=4)
    assert isinstance(a, str) and len(a) == 40 and set(a) <= set("ACGT")
    at = dnalm.generate(model, prompt, 40, seed=3, alphabet="AT")
    assert set(at) <= {"A", "T"}
    out = dnalm.generate(model, [prompt, ecoli(10, 500), prompt], 20, seed=1, num_samples=2, top_k=3)
    assert isinstance(out, list) and len(out) == 6 and all(len(s) == 20 for s in out)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_recurrent_generation_equals_recompute(family):
    model = make_model(family, seed=1)
    prompt = ecoli(50, 10_000)
    fast = generate(model, prompt, 25, temperature=0)
    slow = generate(model, prompt, 25, temperature=0, use_cache=False)
    assert fast == slow
    if family == "striped_hyena_v2":  # seeded sampling too: the same draws see the same probabilities
        kw = dict(seed=7, top_p=0.9)
        assert generate(model, prompt, 25, **kw) == generate(model, prompt, 25, use_cache=False, **kw)


def test_bad_requests_raise_clear_errors():
    model = make_model("striped_hyena_v1")
    with pytest.raises(GenerationError, match="maximum length 300"):
        generate(model, ecoli(250), 100)
    generate(model, ecoli(250), 50)  # 251 + 50 - 1 = 300 positions: fits exactly
    with pytest.raises(GenerationError, match="top_p"):
        generate(model, "ACGT", 5, top_p=0)
    with pytest.raises(GenerationError, match="alphabet"):
        generate(model, "ACGT", 5, alphabet="ACGU")
    assert len(generate(model, "", 5, seed=0)) == 5  # [BOS] alone is a valid prompt


# ----------------------------------------------------------------------------------------------- CLI


def read_fasta(path: Path) -> dict[str, str]:
    records, name = {}, None
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            name = line[1:].split()[0]
            records[name] = ""
        else:
            records[name] += line
    return records


def test_cli_generate_writes_fasta(tmp_path, capsys):
    ckpt = save_pretrained(make_model("striped_hyena_v2"), tmp_path / "model")
    prompts = tmp_path / "prompts.fa"
    prompts.write_text(f">geneA\n{ecoli(60, 190)}\n>geneB\n{ecoli(30, 5000)}\n")
    out = tmp_path / "gen.fa"
    argv = ["generate", str(ckpt), "--prompt", ecoli(20), "--prompt-file", str(prompts),
            "--n-tokens", "50", "--num-samples", "2", "--seed", "5", "--top-k", "4", "-o", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    recs = read_fasta(out)
    assert list(recs) == ["prompt0_0", "prompt0_1", "geneA_0", "geneA_1", "geneB_0", "geneB_1"]
    assert all(len(s) == 50 and set(s) <= set("ACGT") for s in recs.values())
    first = out.read_text()
    assert main(argv) == 0 and out.read_text() == first  # same seed, same checkpoint: same FASTA
    assert "seed=5" in first.splitlines()[0]
    assert main(argv[:-3] + ["--include-prompt", "-o", str(out), "--quiet"]) == 0
    assert read_fasta(out)["geneB_0"].startswith(ecoli(30, 5000))
    assert list(tmp_path.glob(".gen.fa.tmp-*")) == []  # written atomically, nothing left behind


def test_cli_generate_errors_are_one_line(tmp_path, capsys):
    assert main(["generate", "striped-hyena-tiny", "--prompt", "ACGXT", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid character 'X'" in err[0]
    assert main(["generate", "striped-hyena-tiny", "--quiet"]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert main(["generate", "striped-hyena-tiny", "--prompt", "ACGT", "--n-tokens", "5000", "--quiet"]) == 2
    assert "maximum length" in capsys.readouterr().err
    assert not (tmp_path / "x.fa").exists()


def test_cli_generate_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--n-tokens" in text and "(default: 100)" in text and "--top-p" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["striped_hyena_v1", "striped_hyena_v2"])
def test_step_logits_match_full_forward_on_gpu(family):
    torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
    torch.backends.cudnn.allow_tf32 = False
    model = make_model(family).cuda()
    ids = torch.cat([torch.tensor([BOS]), ecoli_ids(119, 3000)])[None].cuda()
    with torch.no_grad():
        full = model(ids).logits
        logits, state = prefill_logits(model, ids[:, :50])
        got = [logits]
        for t in range(50, ids.shape[1]):
            logits, state = step_logits(model, ids[:, t], state)
            got.append(logits[:, None])
    torch.testing.assert_close(torch.cat(got, dim=1), full, rtol=0, atol=1e-4)
    a = dnalm.generate(model, ecoli(40), 30, seed=2)
    assert a == dnalm.generate(model, ecoli(40), 30, seed=2) and set(a) <= set("ACGT")
