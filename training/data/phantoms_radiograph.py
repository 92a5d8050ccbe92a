"""Chest-radiograph phantoms: 2D projection-like thoraxes with anatomy labels and "real" foreign objects.

Each image is a frontal (PA) chest radiograph drawn from a randomly varied thorax: the body's soft
tissue, two lungs domed by the diaphragm, the heart over the left lung (the image's right), the
trachea, two clavicles and rib arcs across both lungs.  Grey values are a projection: each structure
adds its attenuation times its thickness (an ellipse's chord profile), so edges are smooth and
overlaps add up (ribs over lung, heart over lung); then a smooth exposure field, quantum-like noise
(sd ∝ √signal), a per-image exposure and gamma, and 12-bit quantisation.  Bone is bright, air dark.

Some images carry "real" foreign objects, drawn by another procedure than the shape-insertion
synthesiser (so a study on these phantoms is not circular): ECG electrodes (a disc with a bright
snap, class ``device``) on the chest wall, and central lines (class ``wire``) that run from the upper
chest along circular arcs and end in the heart's silhouette.  Every object is an instance (its id in
``instances/``).  Image i depends only on (seed, i).  Written in the radiograph layout
(`training.data.layout_radiograph`) as 16-bit PNGs, so they go through the readers real data uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from training.data.fsutils import atomic_write_json, build_folder
from training.data.images2d import write_png
from training.data.phantoms import cached_phantoms

GENERATOR_VERSION = 1
RADIOGRAPH_LABELS = ("background", "body", "lung", "heart", "trachea", "clavicle", "rib", "wire", "device")
INSTANCE_LABELS = ("wire", "device")
BODY, LUNG, HEART, TRACHEA, CLAVICLE, RIB, WIRE, DEVICE = range(1, 9)
FIELD_OF_VIEW_MM = 380.0
MAX_PIXEL = 4095  # 12-bit detector values, stored in 16-bit PNGs


@dataclass(frozen=True)
class RadiographImage:
    """One phantom radiograph: pixels uint16 [R, C], labels uint8 [R, C] (index into
    RADIOGRAPH_LABELS), instances uint16 [R, C] (0 = no object), objects: (id, class name) pairs."""

    pixels: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    objects: tuple[tuple[int, str], ...]


def _ellipse(u: np.ndarray, v: np.ndarray, centre: tuple[float, float], radii: tuple[float, float],
             angle: float = 0.0) -> np.ndarray:
    """Chord thickness in [0, 1] of an ellipse (1 at its centre, 0 outside): a projected ellipsoid."""
    c, s = np.cos(angle), np.sin(angle)
    du, dv = u - centre[0], v - centre[1]
    a, b = (c * du + s * dv) / radii[0], (-s * du + c * dv) / radii[1]
    return np.sqrt(np.clip(1.0 - a * a - b * b, 0.0, None))


def _band(u: np.ndarray, v: np.ndarray, points: np.ndarray, width: float) -> np.ndarray:
    """Thickness in [0, 1] of a tube of ``width`` along the polyline ``points`` [n, 2] (u, v)."""
    distance = np.full(u.shape, np.inf)
    for a, b in zip(points[:-1], points[1:]):
        ab = b - a
        t = np.clip(((u - a[0]) * ab[0] + (v - a[1]) * ab[1]) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
        distance = np.minimum(distance, np.hypot(u - a[0] - t * ab[0], v - a[1] - t * ab[1]))
    return np.sqrt(np.clip(1.0 - (2.0 * distance / width) ** 2, 0.0, None))


def _arc(start: np.ndarray, end: np.ndarray, bulge: float, n: int = 24) -> np.ndarray:
    """Points [n, 2] of a circular arc from ``start`` to ``end`` whose middle is pushed sideways by
    ``bulge`` (a fraction of the chord)."""
    chord = end - start
    normal = np.array([-chord[1], chord[0]])
    t = np.linspace(0.0, 1.0, n)[:, None]
    return start + t * chord + (4.0 * bulge * t * (1.0 - t)) * normal


def generate_radiograph(seed: int, index: int, shape: tuple[int, int] = (128, 128),
                        object_fraction: float = 0.5) -> RadiographImage:
    """Phantom radiograph ``index`` of population ``seed`` (deterministic); with probability
    ``object_fraction`` it carries 1-3 foreign objects."""
    rng = np.random.default_rng([seed, index, 1709])
    rows, columns = shape
    v, u = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, columns) * columns / rows, indexing="ij")

    def jitter(scale: float) -> float:  # one draw per call, in order
        return float(rng.normal(0.0, scale))

    body = _ellipse(u, v, (jitter(0.02), 0.15), (0.88 + jitter(0.04), 1.25))
    lung_v, lung_h = -0.08 + jitter(0.03), 0.5 + jitter(0.04)
    lungs = [_ellipse(u, v, (side * (0.37 + jitter(0.02)), lung_v), (0.25 + jitter(0.02), lung_h), side * 0.08)
             for side in (-1, 1)]
    diaphragm = v < lung_v + lung_h * 0.78 - 0.12 * (u ** 2)       # domes cut the lungs' lower poles
    lung = np.maximum(*lungs) * diaphragm
    heart = _ellipse(u, v, (0.14 + jitter(0.03), 0.3 + jitter(0.03)), (0.3 + jitter(0.03), 0.24 + jitter(0.02)),
                     -0.35 + jitter(0.05))
    trachea = _band(u, v, np.array([[jitter(0.01), -1.1], [jitter(0.02), -0.3]]), 0.1)
    clavicles = [_band(u, v, np.array([[side * 0.08, -0.66], [side * 0.4, -0.74 + jitter(0.02)],
                                       [side * 0.75, -0.66 + jitter(0.02)]]), 0.07) for side in (-1, 1)]
    clavicle = np.maximum(*clavicles)
    ribs = np.zeros(shape)
    for side in (-1, 1):
        for k in range(7):
            top = -0.55 + 0.17 * k + jitter(0.01)
            points = np.array([[side * 0.06, top], [side * 0.35, top - 0.06], [side * 0.62, top + 0.1],
                               [side * 0.7, top + 0.25]])
            ribs = np.maximum(ribs, _band(u, v, points, 0.045 + jitter(0.003)))
    ribs *= body > 0
    labels = np.zeros(shape, dtype=np.uint8)
    for structure, label in ((body, BODY), (lung, LUNG), (heart, HEART), (trachea, TRACHEA),
                             (ribs, RIB), (clavicle, CLAVICLE)):
        labels[structure > 0.05] = label
    attenuation = 1.0 * body - 0.7 * lung * (heart < 0.05) - 0.3 * trachea + 0.5 * heart + 0.35 * ribs + 0.6 * clavicle
    instances = np.zeros(shape, dtype=np.uint16)
    objects: list[tuple[int, str]] = []
    if rng.random() < object_fraction:
        for _ in range(int(rng.integers(1, 4))):
            kind = "wire" if rng.random() < 0.5 else "device"
            if kind == "wire":
                start = np.array([rng.choice([-1, 1]) * rng.uniform(0.3, 0.6), rng.uniform(-0.85, -0.65)])
                end = np.array([0.14 + rng.uniform(-0.15, 0.15), 0.3 + rng.uniform(-0.1, 0.1)])
                thickness = _band(u, v, _arc(start, end, rng.uniform(-0.25, 0.25)), 0.03)
            else:
                centre = (rng.uniform(-0.75, 0.75), rng.uniform(-0.6, 0.55))
                thickness = np.maximum(0.5 * _ellipse(u, v, centre, (0.06, 0.06)), _ellipse(u, v, centre, (0.02, 0.02)))
            drawn = thickness > 0.05
            if not drawn.any():
                continue
            objects.append((len(objects) + 1, kind))
            instances[drawn] = len(objects)
            labels[drawn] = WIRE if kind == "wire" else DEVICE
            attenuation = attenuation + (1.6 if kind == "wire" else 2.2) * thickness
    # a smooth exposure field: white noise filtered at sigma = rows / 6 has sd 1 / (2 sqrt(pi) sigma), so
    # the log exposure varies by ~0.9 % (sd) over the image
    exposure = np.exp(ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), sigma=rows / 6) * 0.6 * rows / 6 * 0.05)
    signal = np.clip(attenuation, 0.0, None) * exposure * rng.uniform(0.8, 1.1) + 0.08
    signal = signal / max(float(signal.max()), 1e-6)
    noisy = signal + rng.normal(0.0, 1.0, shape) * 0.015 * np.sqrt(signal + 0.05)
    gamma = rng.uniform(0.85, 1.15)
    pixels = np.rint(np.clip(noisy, 0.0, 1.0) ** gamma * MAX_PIXEL).astype(np.uint16)
    return RadiographImage(pixels, labels, instances, tuple(objects))


def write_radiograph_dataset(out_dir: str | Path, n_images: int = 20, shape: tuple[int, int] = (128, 128),
                             seed: int = 0, object_fraction: float = 0.5) -> Path:
    """Write ``n_images`` phantom radiographs to ``out_dir`` in the radiograph layout (images/, masks/,
    instances/, dataset.json with the labels, the instance labels and the pixel spacing); built
    beside ``out_dir`` and renamed into place.  FileExistsError for a non-empty ``out_dir``."""
    if n_images < 1 or min(shape) < 16:
        raise ValueError(f"need n_images >= 1 and images of at least 16 x 16 pixels, got {n_images}, {shape}")

    def fill(tmp: Path) -> None:
        for folder in ("images", "masks", "instances"):
            (tmp / folder).mkdir()
        for i in range(n_images):
            image = generate_radiograph(seed, i, shape, object_fraction)
            case = f"cxr_{i:03d}"
            write_png(tmp / "images" / f"{case}.png", image.pixels)
            write_png(tmp / "masks" / f"{case}.png", image.labels)
            write_png(tmp / "instances" / f"{case}.png", image.instances)
        spacing = FIELD_OF_VIEW_MM / max(shape)
        atomic_write_json(tmp / "dataset.json", {
            "name": "cxr_phantom", "description": f"stylepair chest-radiograph phantoms (seed {seed})",
            "modality": "CXR", "labels": {str(i): name for i, name in enumerate(RADIOGRAPH_LABELS)},
            "instance_labels": list(INSTANCE_LABELS), "pixel_spacing": [spacing, spacing], "numTraining": n_images})

    return build_folder(out_dir, fill)


def default_radiograph_dataset(n_images: int = 40, shape: tuple[int, int] = (128, 128), seed: int = 0,
                               cache_dir: str | Path | None = None) -> Path:
    """Phantom radiographs generated once into ``<cache>/phantoms/...`` and reused after."""
    name = f"radiograph_n{n_images}_s{seed}_{shape[0]}x{shape[1]}_v{GENERATOR_VERSION}"
    return cached_phantoms(name, lambda out: write_radiograph_dataset(out, n_images, shape, seed), cache_dir)
