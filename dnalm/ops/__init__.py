"""Numerical kernels. Each has a pure-PyTorch reference twin with the same signature (used by tests)."""

from dnalm.ops.fftconv import direct_long_conv, fft_long_conv, fft_size, filter_rfft

__all__ = ["fft_long_conv", "direct_long_conv", "fft_size", "filter_rfft"]
