"""Test-wide settings: one torch thread (2-core machines stall on thread-pool oversubscription)."""
import torch

torch.set_num_threads(1)
