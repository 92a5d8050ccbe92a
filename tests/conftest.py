"""Shared test set-up.

Triton's interpreter must be switched on before triton is first imported, so that the fused-kernel
parity tests run on CPU tensors on machines without a GPU (CI included). Caches that stages write
outside a test's own tmp_path (the default phantom dataset, slice caches of read-only datasets) go
to one temporary folder per test session, never to the user's ~/.cache.
"""
import atexit
import os
import shutil
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if "STYLEPAIR_CACHE_DIR" not in os.environ:
    os.environ["STYLEPAIR_CACHE_DIR"] = tempfile.mkdtemp(prefix="stylepair-test-cache-")
    atexit.register(shutil.rmtree, os.environ["STYLEPAIR_CACHE_DIR"], True)
