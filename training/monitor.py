"""Progress of a training run: TensorBoard scalars and images, stats.jsonl, PNG grids, a tqdm bar.

Only the main process (rank 0) creates a `TrainingMonitor` that writes; the others get a
disabled one.  The bar is shown only when stderr is a terminal, so logs of batch jobs stay clean.
"""
from __future__ import annotations

import json
import math
import resource
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from training.data.fsutils import atomic_write_text

# Overlay colours of label indices 1.. (index 0, background, is not drawn).
LABEL_COLOURS = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25],
                          [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230]],
                         dtype=np.float32) / 255.0
OVERLAY_ALPHA = 0.3
MIN_TILE_PX = 96          # small slices are enlarged (nearest neighbour) in the grids


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB -> GiB (Linux)


def overlay_tiles(images: np.ndarray | None, labels: np.ndarray) -> list[np.ndarray]:
    """Per modality, RGB tiles [N,H,W,3] in [0,1]: the image in grey with the mask in colour.

    images [N,M,H,W] in [-1,1] (or None for mask-only samples: one tile set of the mask on black),
    labels [N,H,W] label indices.  The last entry is always the mask alone.
    """
    colours = np.concatenate([np.zeros((1, 3), np.float32),
                              LABEL_COLOURS[np.arange(int(labels.max(initial=0))) % len(LABEL_COLOURS)]])
    mask_rgb = colours[labels]                                    # [N,H,W,3]
    fg = (labels > 0)[..., None]
    tiles = []
    if images is not None:
        for m in range(images.shape[1]):
            grey = np.clip((images[:, m] + 1) / 2, 0, 1)[..., None].repeat(3, axis=-1)
            tiles.append(np.where(fg, (1 - OVERLAY_ALPHA) * grey + OVERLAY_ALPHA * mask_rgb, grey))
    tiles.append(mask_rgb)
    return tiles


def tile_grid(tiles: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """Arrange [N,H,W,3] tiles into one [rows*(H+pad), columns*(W+pad), 3] image."""
    n, h, w, _ = tiles.shape
    rows = math.ceil(n / columns)
    grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), np.float32)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = tiles[i]
    return grid


def sample_grids(images: np.ndarray | None, labels: np.ndarray, names: list[str],
                 columns: int = 4) -> dict[str, np.ndarray]:
    """Named grids (one per modality, plus "mask"): uint8 [H', W', 3] images.

    Tiles smaller than MIN_TILE_PX are enlarged by an integer factor (nearest neighbour).
    """
    factor = max(1, -(-MIN_TILE_PX // labels.shape[-1]))
    tiles = [t.repeat(factor, axis=1).repeat(factor, axis=2) for t in overlay_tiles(images, labels)]
    keys = (list(names) if images is not None else []) + ["mask"]
    return {k: (tile_grid(t, columns) * 255).round().astype(np.uint8) for k, t in zip(keys, tiles)}


def save_grids_png(path: Path, grids: dict[str, np.ndarray], title: str) -> None:
    """The per-modality grids side by side, each titled with its name, as one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = next(iter(grids.values())).shape[:2]
    fig, axes = plt.subplots(1, len(grids), figsize=(len(grids) * width / 100 + 0.2, height / 100 + 0.5),
                             dpi=100, squeeze=False)
    for ax, (name, grid) in zip(axes[0], grids.items()):
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class TrainingMonitor:
    """TensorBoard + stats.jsonl + PNG grids + tqdm bar for one run directory (main process only)."""

    def __init__(self, run_dir: Path, total_kimg: float, start_kimg: float = 0.0,
                 enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.total_kimg = total_kimg
        self.writer = None
        self.bar = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        self.bar = tqdm(total=round(total_kimg, 3), initial=round(start_kimg, 3), unit="kimg",
                        dynamic_ncols=True, disable=not sys.stderr.isatty(),
                        bar_format="{l_bar}{bar}| {n:.2f}/{total:.0f} kimg [{elapsed}<{remaining}{postfix}]")

    def advance(self, kimg: float) -> None:
        """Move the bar to ``kimg``."""
        if self.bar is not None and not self.bar.disable:
            self.bar.update(kimg - self.bar.n)

    def forget_ticks_after(self, nimg: int) -> None:
        """Drop the stats.jsonl lines of ticks after ``nimg`` (a resumed run logs them again: a
        kill -9 after a tick but before the next snapshot would otherwise leave them twice)."""
        path = self.run_dir / "stats.jsonl"
        if not self.enabled or not path.is_file():
            return
        kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                if line.strip() and json.loads(line).get("kimg", 0.0) <= nimg / 1000.0 + 1e-9]
        atomic_write_text(path, "".join(kept))

    def log_tick(self, stats: dict[str, float], nimg: int) -> None:
        """Write one tick's scalars (TensorBoard, stats.jsonl) and show the losses on the bar."""
        if not self.enabled:
            return
        record = {"kimg": nimg / 1000.0, **{k: float(v) for k, v in stats.items()}}
        with open(self.run_dir / "stats.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        if self.writer is not None:
            for key, value in stats.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, global_step=nimg)
            self.writer.flush()
        shown = {k.split("/")[-1]: f"{v:.3g}" for k, v in stats.items()
                 if k in ("loss/G", "loss/D", "timing/sec_per_kimg", "augment/p")}
        if self.bar is not None and not self.bar.disable:
            self.bar.set_postfix(shown, refresh=True)
        elif self.bar is not None:  # no terminal (nohup, a scheduler's log): one line per tick instead of a bar
            kimg = nimg / 1000.0
            rate = stats.get("timing/sec_per_kimg", math.nan)
            eta = (self.total_kimg - kimg) * rate / 60 if math.isfinite(rate) else math.nan
            print(f"tick: {kimg:.3f}/{self.total_kimg:g} kimg, " + ", ".join(f"{k} {v}" for k, v in shown.items())
                  + f", ETA {eta:.1f} min", file=sys.stderr, flush=True)

    def log_samples(self, images: np.ndarray | None, labels: np.ndarray, names: list[str],
                    nimg: int, tag: str = "samples") -> Path | None:
        """Save the grid PNG ``<tag>-<nimg>.png`` (and ``<tag>-latest.png``), log it to TensorBoard.

        images [N,M,H,W] in [-1,1] or None (mask-only), labels [N,H,W] label indices.
        """
        if not self.enabled:
            return None
        grids = sample_grids(images, labels, names)
        path = self.run_dir / f"{tag}-{nimg:09d}.png"
        save_grids_png(path, grids, f"{tag} at {nimg / 1000:.1f} kimg (mask overlay in colour)")
        shutil.copyfile(path, self.run_dir / f"{tag}-latest.png")
        if self.writer is not None:
            for name, grid in grids.items():
                self.writer.add_image(f"{tag}/{name}", grid, global_step=nimg,
                                      dataformats="HWC")
            self.writer.flush()
        return path

    def message(self, text: str) -> None:
        """A line for the user (through tqdm so the bar is not broken)."""
        if self.enabled:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        """Flush and close the writer and the bar."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
