"""Shared test set-up.

Triton's interpreter must be switched on before triton is first imported, so that the fused-kernel
parity tests run on CPU tensors on machines without a GPU (CI included).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
