"""Mamba-2: the chunked SSD scan against the step-by-step recurrence, and the layer's recurrent step
against its parallel forward."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from dnalm.models import mamba2
from dnalm.models.mamba2 import Mamba2, Mamba2Block, ssd_chunked, ssd_scan, ssd_sequential


def _inputs(b, l, h, p, g, n, seed=0, decay=2.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, h, p, generator=gen)
    log_a = -torch.rand(b, l, h, generator=gen) * decay
    B = torch.randn(b, l, g, n, generator=gen)
    C = torch.randn(b, l, g, n, generator=gen)
    return x, log_a, B, C


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
@pytest.mark.parametrize("length", [1, 7, 33, 100])
def test_chunked_scan_matches_sequential(chunk, length):
    x, log_a, B, C = _inputs(2, length, 4, 3, 2, 5, seed=chunk * 1000 + length)
    y_ref, s_ref = ssd_sequential(x, log_a, B, C)
    y, s = ssd_chunked(x, log_a, B, C, chunk)
    assert y.shape == (2, length, 4, 3) and s.shape == (2, 4, 3, 5)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s, s_ref, atol=1e-4, rtol=1e-4)


def test_chunked_scan_initial_state_and_strong_decay():
    # large per-step decays make the within-chunk prefix sums big (hundreds): the decays inside a
    # chunk, taken as differences of prefix sums, must stay accurate, and exp must never overflow
    x, log_a, B, C = _inputs(1, 75, 3, 4, 1, 6, seed=3, decay=12.0)
    s0 = torch.randn(1, 3, 4, 6)
    y_ref, s_ref = ssd_sequential(x, log_a, B, C, s0)
    y, s = ssd_chunked(x, log_a, B, C, 32, s0)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s, s_ref, atol=1e-4, rtol=1e-4)


def test_chunked_scan_split_equals_whole():
    # running the second half from the first half's final state gives the whole sequence's outputs
    x, log_a, B, C = _inputs(2, 50, 2, 3, 1, 4, seed=5)
    y, s = ssd_chunked(x, log_a, B, C, 8)
    y1, s1 = ssd_chunked(x[:, :21], log_a[:, :21], B[:, :21], C[:, :21], 8)
    y2, s2 = ssd_chunked(x[:, 21:], log_a[:, 21:], B[:, 21:], C[:, 21:], 8, s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s2, s, atol=1e-5, rtol=1e-5)


def test_chunked_scan_gradients_match_sequential():
    x, log_a, B, C = _inputs(1, 19, 2, 2, 1, 3, seed=7)
    grads = []
    for fn in (lambda *a: ssd_sequential(*a)[0], lambda *a: ssd_chunked(*a, 8)[0]):
        leaves = [t.clone().requires_grad_(True) for t in (x, log_a, B, C)]
        (fn(*leaves) * torch.linspace(-1, 1, 19)[None, :, None, None]).sum().backward()
        grads.append([t.grad for t in leaves])
    for g_ref, g in zip(*grads):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("b,l,h,g,T,s0", [(2, 70, 4, 2, 8, True), (1, 33, 2, 1, 4, False), (3, 23, 3, 3, 5, True)])
def test_scan_backward_gradcheck_float64(monkeypatch, b, l, h, g, T, s0):
    # the hand-written backward of _SSDChunked against finite differences, in float64, with groups and
    # tiles small enough that the group loop (forward and reverse), the tiles and the padded tail all run
    monkeypatch.setattr(mamba2, "_GROUP", 2 * T)
    monkeypatch.setattr(mamba2, "_TILE", 2 * T * T)
    x, log_a, B, C = (t.double() for t in _inputs(b, l, h, 3, g, 2, seed=l))
    args = [x, log_a, B, C] + ([torch.randn(b, h, 3, 2, dtype=torch.float64)] if s0 else [])
    args = [a.requires_grad_() for a in args]
    fn = lambda x, la, B, C, *s: mamba2._SSDChunked.apply(x, la, B, C, s[0] if s else None, T)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


def test_scan_backward_matches_autograd_of_sequential(monkeypatch):
    # gradients of every input, the initial state included, through y and the final state, against
    # autograd through the step-by-step reference; strong decays (many flushed (T, T) decays), padding
    monkeypatch.setattr(mamba2, "_GROUP", 32)
    x, log_a, B, C = _inputs(2, 75, 4, 3, 2, 5, seed=9, decay=6.0)
    s0 = torch.randn(2, 4, 3, 5)
    gy, gs = torch.randn(2, 75, 4, 3), torch.randn(2, 4, 3, 5)
    grads = []
    for fn in (ssd_sequential, lambda *a: ssd_chunked(*a[:4], 16, a[4])):
        leaves = [t.clone().requires_grad_(True) for t in (x, log_a, B, C, s0)]
        y, s = fn(*leaves)
        ((y * gy).sum() + (s * gs).sum()).backward()
        grads.append([t.grad for t in leaves])
    for g_ref, g in zip(*grads):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("length", [2, 11])
def test_causal_conv_matches_conv1d(length):
    # the shifted multiply-adds and their hand-written backward against nn.Conv1d (also shorter than the kernel)
    torch.manual_seed(2)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    u = torch.randn(2, length, 6, requires_grad=True)
    u2 = u.detach().clone().requires_grad_(True)
    y = mamba2._causal_conv(u, conv.weight, conv.bias)
    y_ref = conv(u2.transpose(1, 2))[..., :length].transpose(1, 2)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    gw = torch.autograd.grad(y, (u, conv.weight, conv.bias), g)
    gw_ref = torch.autograd.grad(y_ref, (u2, conv.weight, conv.bias), g)
    for a, b in zip(gw, gw_ref):
        torch.testing.assert_close(a, b)


def test_scan_empty_sequence():
    x, log_a, B, C = _inputs(2, 0, 4, 3, 2, 5)
    s0 = torch.randn(2, 4, 3, 5)
    y, s = ssd_chunked(x, log_a, B, C, 8, s0)
    assert y.shape == (2, 0, 4, 3)
    torch.testing.assert_close(s, s0)


def _layer(**kw):
    torch.manual_seed(0)
    m = Mamba2(32, d_state=8, headdim=16, chunk_size=8, **kw)
    with torch.no_grad():  # a non-trivial conv bias and skip, so the step path is exercised fully
        m.conv1d.bias.normal_(0, 0.3)
        m.D.normal_(1, 0.3)
    return m.eval()


@pytest.mark.parametrize("split", [1, 2, 13])
def test_layer_prefill_then_step_matches_forward(split):
    m = _layer()
    u = torch.randn(2, 21, 32)
    with torch.no_grad():
        y = m(u)
        y0, state = m.prefill(u[:, :split])
        outs = [y0]
        for t in range(split, 21):
            yt, state = m.step(u[:, t], state)
            outs.append(yt[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), y, atol=1e-5, rtol=1e-4)


def test_layer_steps_from_empty_state_match_forward():
    m = _layer()
    u = torch.randn(1, 9, 32)
    with torch.no_grad():
        y = m(u)
        state = m.empty_state(1)
        outs = [m.step(u[:, t], state)[0] for t in range(9)]
    torch.testing.assert_close(torch.stack(outs, 1), y, atol=1e-5, rtol=1e-4)


def test_block_is_causal_and_step_matches():
    torch.manual_seed(1)
    blk = Mamba2Block(16, d_state=4, headdim=8, chunk_size=4).eval()
    u = torch.randn(1, 12, 16)
    u2 = u.clone()
    u2[:, 8:] = torch.randn(1, 4, 16)
    with torch.no_grad():
        y, y2 = blk(u), blk(u2)
        torch.testing.assert_close(y[:, :8], y2[:, :8])
        assert not torch.allclose(y[:, 8:], y2[:, 8:])
        y0, st = blk.prefill(u[:, :5])
        steps = [blk.step(u[:, t], st)[0] for t in range(5, 12)]
    torch.testing.assert_close(torch.cat([y0, torch.stack(steps, 1)], 1), y, atol=1e-5, rtol=1e-4)


def test_layer_init_ranges():
    m = Mamba2(64, d_state=16, headdim=32)
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert (dt >= 1e-3 - 1e-6).all() and (dt <= 0.1 + 1e-6).all()
    A = -torch.exp(m.A_log)
    assert (A <= -1 + 1e-6).all() and (A >= -16 - 1e-5).all()
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(30, headdim=16)


def test_import_never_pulls_in_gpu_packages():
    code = (
        "import sys, torch, dnalm, dnalm.models.mamba2 as m;"
        "x = torch.randn(1, 5, 32); m.Mamba2(32, d_state=4, headdim=16, chunk_size=4)(x);"
        "bad = [k for k in sys.modules if k.split('.')[0] in ('mamba_ssm', 'triton', 'causal_conv1d')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(
    not (torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None),
    reason="needs CUDA and the mamba-ssm package",
)
def test_fast_kernel_matches_pure_scan():
    x, log_a, B, C = _inputs(2, 300, 4, 16, 1, 16, seed=11)
    dt = torch.rand(2, 300, 4) * 0.1 + 1e-3
    A = -torch.rand(4) * 4 - 1
    dev = torch.device("cuda")
    args = [t.to(dev) for t in (x, dt, A, B, C)]
    y_fast, s_fast = ssd_scan(*args, 64, fast=True)
    y_ref, s_ref = ssd_scan(*args, 64, fast=False)
    torch.testing.assert_close(y_fast, y_ref, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(s_fast, s_ref, atol=1e-3, rtol=1e-3)
