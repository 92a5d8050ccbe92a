"""Which implementation of the ops runs: the pure-PyTorch reference or the fused Triton kernels.

One explicit setting (`set_backend`, or the environment variable STYLEPAIR_OPS read once at first
use) chooses `auto`, `ref` or `fused`. `auto` runs the fused kernels on CUDA tensors when triton is
installed and the reference everywhere else. Nothing is compiled at import time, nothing falls back
silently: the path chosen is logged once per (op, path), and a forced `fused` that cannot run raises.
"""
from __future__ import annotations

import importlib.util
import logging
import os

import torch

log = logging.getLogger("stylepair.ops")

BACKENDS = ("auto", "ref", "fused")

_backend: str | None = None  # None until first use: then STYLEPAIR_OPS or "auto"
_logged: set[tuple[str, str]] = set()


def set_backend(name: str) -> None:
    """Choose the ops implementation for the whole process: "auto", "ref" or "fused"."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown ops backend {name!r}; expected one of {BACKENDS}")
    _backend = name


def get_backend() -> str:
    """The current setting ("auto", "ref" or "fused"); defaults to $STYLEPAIR_OPS or "auto"."""
    global _backend
    if _backend is None:
        set_backend(os.environ.get("STYLEPAIR_OPS", "auto"))
    return _backend


def triton_available() -> bool:
    """Whether the triton package can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _log_once(op: str, path: str, message: str, level: int = logging.INFO) -> None:
    if (op, path) not in _logged:
        _logged.add((op, path))
        log.log(level, message)


def select_impl(op: str, x: torch.Tensor, impl: str | None = None) -> str:
    """Resolve which implementation runs `op` on tensor `x`.

    Args:
        op: the op's name, for the log line and error messages.
        x: the op's input tensor; its device decides the `auto` choice.
        impl: per-call override ("auto", "ref", "fused"); None uses the process-wide setting.

    Returns:
        "ref" or "fused".
    """
    choice = impl if impl is not None else get_backend()
    if choice not in BACKENDS:
        raise ValueError(f"unknown ops backend {choice!r} for {op}; expected one of {BACKENDS}")
    if choice == "ref":
        _log_once(op, "ref", f"{op}: reference PyTorch path (backend 'ref')")
        return "ref"
    if choice == "fused":
        if not triton_available():
            raise RuntimeError(f"{op}: backend 'fused' needs triton (pip install triton), which is not installed")
        if x.device.type != "cuda" and not _interpreter_on():
            raise RuntimeError(
                f"{op}: backend 'fused' on a {x.device.type} tensor needs a CUDA GPU, or TRITON_INTERPRET=1 "
                "set before triton is imported (the interpreter runs the kernels on CPU, slowly)")
        _log_once(op, "fused", f"{op}: fused Triton path on {x.device.type}")
        return "fused"
    if x.device.type == "cuda":
        if triton_available():
            _log_once(op, "fused", f"{op}: fused Triton path on cuda (backend 'auto')")
            return "fused"
        _log_once(op, "ref", f"{op}: triton is not installed, so the reference PyTorch path runs on cuda "
                  "(pip install triton for the fused kernels)", logging.WARNING)
        return "ref"
    _log_once(op, "ref", f"{op}: reference PyTorch path on {x.device.type} (backend 'auto')")
    return "ref"
