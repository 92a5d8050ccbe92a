"""Shared test set-up.

Triton's interpreter must be switched on before triton is first imported, so that the fused-kernel
parity tests run on CPU tensors on machines without a GPU (CI included). Caches that stages write
outside a test's own tmp_path (the default phantom dataset, slice caches of read-only datasets) go
to one temporary XDG cache folder per test session, never to the user's ~/.cache nor to a
``$STYLEPAIR_CACHE_DIR`` the user set (datasets under tmp_path keep their cache beside them).
"""
import atexit
import os
import shutil
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

os.environ.pop("STYLEPAIR_CACHE_DIR", None)
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="stylepair-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)


import pytest  # noqa: E402  (after the environment set-up above, which must precede any triton import)


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> str:
    """Three MSD phantom patients of 32x32x8 voxels (population seed 1), shared read-only by the tests
    that train tiny GANs on them (their slice cache is built once, beside them)."""
    from training.data import write_phantom_dataset

    return str(write_phantom_dataset(tmp_path_factory.mktemp("shared") / "phantoms", n_patients=3,
                                     shape=(32, 32, 8), seed=1))
