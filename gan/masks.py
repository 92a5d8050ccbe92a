"""Label maps <-> the networks' mask channels (L one-hot channels scaled to [-1, 1])."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def labels_to_channels(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Label indices [N, H, W] (integers in 0..L-1) -> one-hot channels [N, L, H, W] in {-1, 1}.

    Raises ValueError for a non-integer tensor, a wrong rank, L < 2 or indices outside 0..L-1.
    """
    if num_labels < 2:
        raise ValueError(f"labels_to_channels needs at least 2 labels (background + one), got {num_labels}")
    if labels.ndim != 3:
        raise ValueError(f"labels must have shape [N, H, W], got {list(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of label indices, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
        raise ValueError(f"label indices must lie in 0..{num_labels - 1}, got "
                         f"{int(labels.min())}..{int(labels.max())}")
    onehot = F.one_hot(labels.long(), num_labels)               # [N, H, W, L]
    return onehot.permute(0, 3, 1, 2).to(torch.float32) * 2 - 1


def channels_to_labels(channels: torch.Tensor) -> torch.Tensor:
    """Mask channels [N, L, H, W] (any real values) -> label indices [N, H, W] long, by argmax."""
    if channels.ndim != 4 or channels.shape[1] < 2:
        raise ValueError(f"mask channels must have shape [N, L >= 2, H, W], got {list(channels.shape)}")
    return channels.argmax(dim=1)
