"""PairSampler: the pair pipeline mask -> image (a mask generator, then a conditional generator)."""
from __future__ import annotations

import torch
from torch import nn

from gan.masks import channels_to_labels, labels_to_channels


class PairSampler:
    """Sample (images, label map) pairs: labels from a 'mask' G, the images for them from a
    'conditional' G.  The sampled mask is decoded by argmax and re-encoded one-hot in {-1, 1}
    before it conditions the image generator, exactly like the real masks it was trained on."""

    def __init__(self, mask_generator: nn.Module, image_generator: nn.Module):
        if getattr(mask_generator, "variant", None) != "mask":
            raise ValueError(f"PairSampler needs a 'mask' generator first, got variant "
                             f"{getattr(mask_generator, 'variant', None)!r}")
        if getattr(image_generator, "variant", None) != "conditional":
            raise ValueError(f"PairSampler needs a 'conditional' generator second, got variant "
                             f"{getattr(image_generator, 'variant', None)!r}")
        if mask_generator.out_channels != image_generator.mask_channels:
            raise ValueError(f"the mask generator makes {mask_generator.out_channels} label channels but "
                             f"the conditional generator expects {image_generator.mask_channels}")
        if mask_generator.img_resolution != image_generator.img_resolution:
            raise ValueError(f"resolutions differ: mask generator {mask_generator.img_resolution}, "
                             f"conditional generator {image_generator.img_resolution}")
        if mask_generator.c_dim != image_generator.c_dim:
            raise ValueError(f"c_dim differs: mask generator {mask_generator.c_dim}, "
                             f"conditional generator {image_generator.c_dim}")
        self.mask_generator = mask_generator
        self.image_generator = image_generator
        self.num_labels = mask_generator.out_channels

    @torch.no_grad()
    def __call__(self, z_mask: torch.Tensor, z_image: torch.Tensor, c: torch.Tensor | None,
                 truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                 noise_mode: str = "const") -> tuple[torch.Tensor, torch.Tensor]:
        """z_mask [N, z_dim_mask], z_image [N, z_dim_image], c [N, c_dim] (shared by both) ->
        (images [N, M, H, W] unclamped ~[-1, 1], labels [N, H, W] long in 0..L-1)."""
        if z_mask.shape[0] != z_image.shape[0]:
            raise ValueError(f"z_mask has {z_mask.shape[0]} rows but z_image has {z_image.shape[0]}")
        mask_channels = self.mask_generator(z_mask, c, truncation_psi=truncation_psi,
                                            truncation_cutoff=truncation_cutoff, noise_mode=noise_mode)
        labels = channels_to_labels(mask_channels)                        # [N, H, W]
        mask = labels_to_channels(labels, self.num_labels)                # [N, L, H, W] in {-1, 1}
        images = self.image_generator(z_image, c, mask=mask, truncation_psi=truncation_psi,
                                      truncation_cutoff=truncation_cutoff, noise_mode=noise_mode)
        return images, labels
