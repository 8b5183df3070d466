"""Test-wide settings: the models here are tiny, so one CPU thread is fastest and deterministic."""

import torch

torch.set_num_threads(1)
