"""Geometry shared by the synthesisers: smooth random fields, elastic deformation, ellipsoids,
regions a shape fits into, and blending masks.  All arrays are [X, Y, Z]; distances in mm use
the voxel spacing, so anisotropic volumes get round lesions in world space."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: int = 4) -> np.ndarray:
    """float32 [shape]: a smooth random field with zero mean and unit sd (cubic upsampling of a
    coarse Gaussian grid of ``cells`` per axis, fewer along short axes)."""
    coarse_shape = tuple(max(2, min(cells, s)) for s in shape)
    coarse = rng.standard_normal(coarse_shape)
    field = ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse_shape)], order=3, mode="nearest",
                         grid_mode=True)[tuple(slice(0, s) for s in shape)]
    field = field - field.mean()
    return (field / (field.std() + 1e-8)).astype(np.float32)


def elastic_displacement(rng: np.random.Generator, shape: tuple[int, int, int], amplitude_vox: float,
                         cells: int = 4) -> np.ndarray:
    """float32 [3, X, Y, Z]: a smooth displacement (voxels) of sd ``amplitude_vox`` per axis; none
    along an axis of fewer than 4 voxels (a 2D image stays one slice)."""
    fields = [smooth_field(rng, shape, cells) * amplitude_vox if s >= 4 else np.zeros(shape, np.float32)
              for s in shape]
    return np.stack(fields)


def warp(volume: np.ndarray, displacement: np.ndarray, order: int) -> np.ndarray:
    """``volume`` [X, Y, Z] sampled at grid + displacement [3, X, Y, Z] (order 0 for labels, 1 for
    intensities; edges repeat)."""
    grid = np.indices(volume.shape, dtype=np.float32) + displacement
    return ndimage.map_coordinates(volume, grid, order=order, mode="nearest").astype(volume.dtype, copy=False)


def ellipsoid(shape: tuple[int, int, int], centre: np.ndarray, radii_mm: np.ndarray, spacing: np.ndarray,
              rotation: np.ndarray | None = None) -> np.ndarray:
    """bool [X, Y, Z]: voxels whose centre lies inside the ellipsoid (semi-axes ``radii_mm``,
    rotated by the 3x3 ``rotation``) around ``centre`` (voxel coordinates)."""
    offsets = (np.indices(shape, dtype=np.float32) - np.asarray(centre, np.float32)[:, None, None, None])
    offsets *= np.asarray(spacing, np.float32)[:, None, None, None]
    if rotation is not None:
        offsets = np.einsum("ij,j...->i...", rotation.T.astype(np.float32), offsets)
    return np.sum((offsets / np.asarray(radii_mm, np.float32)[:, None, None, None]) ** 2, axis=0) <= 1.0


def random_rotation(rng: np.random.Generator, in_plane_only: bool = False) -> np.ndarray:
    """A random 3x3 rotation: uniform over SO(3), or about the z axis only."""
    if in_plane_only:
        angle = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(angle), np.sin(angle)
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def fits(region: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """bool [X, Y, Z]: voxels of ``region`` at least ``radius_mm`` from its outside (the centres
    where a ball of that radius stays inside), from the Euclidean distance transform."""
    if not region.any():
        return region.copy()
    return ndimage.distance_transform_edt(region, sampling=spacing) >= radius_mm


def random_voxel(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray | None:
    """Coordinates [3] of a uniformly drawn voxel of ``mask`` (None when empty)."""
    where = np.flatnonzero(mask)
    if not where.size:
        return None
    return np.array(np.unravel_index(where[rng.integers(where.size)], mask.shape), dtype=np.float64)


def soft_mask(mask: np.ndarray, sigma_mm: float, spacing: np.ndarray, limit: np.ndarray | None = None
              ) -> np.ndarray:
    """float32 [X, Y, Z] in [0, 1]: ``mask`` blurred by a Gaussian of ``sigma_mm`` (1 inside the
    mask), values below 0.01 set to 0 so the blend has a bounded support, and 0 outside ``limit``."""
    alpha = mask.astype(np.float32)
    if sigma_mm > 0:
        alpha = ndimage.gaussian_filter(alpha, sigma=[sigma_mm / s for s in spacing], mode="constant")
        alpha = np.maximum(alpha, mask.astype(np.float32))
    alpha[alpha < 0.01] = 0.0
    if limit is not None:
        alpha[~limit] = 0.0
    return alpha


def filtered_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma_vox: float) -> np.ndarray:
    """float32 [X, Y, Z]: Gaussian noise smoothed by ``sigma_vox`` and scaled to unit sd (a texture)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return noise / (noise.std() + 1e-8)
