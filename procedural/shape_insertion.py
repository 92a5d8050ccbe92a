"""shape-insertion: foreign-object-like primitives placed where the anatomy allows (after the
anatomy-guided shape insertion of the chest X-ray foreign-object study).

Each entry of ``objects`` describes one kind of object: its primitive (disc, ring, rectangle,
polygon, line, wire = a cubic Bezier curve, grid = a stent-like lattice), its label, where it may go
(``inside``: cut to the named labels; ``overlap``: centred on them, not cut), and ranges for its
count, size, slab thickness in slices, signed contrast and opacity.  A primitive is drawn in the
axial plane at a random orientation and extruded through a contiguous run of slices (a 2D image
is one slice).  For synthetic patient j (source = training patient j mod n):

    image_m += a * contrast * opacity * (body range of m),  a = the object blurred by blend_mm
    labels[object] = its label;  instances[object] = its id (one per object, in insertion order)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from matplotlib.path import Path as PolygonPath
from scipy import ndimage

from procedural.base import LabelSet, ProceduralError, VolumePatient, foreground_range
from procedural.config import require
from procedural.geometry import random_voxel, soft_mask

KINDS = ("disc", "ring", "rectangle", "polygon", "line", "wire", "grid")
OBJECT_KEYS = {"kind", "label", "inside", "overlap", "count", "size_mm", "slices", "contrast", "opacity"}
OBJECT_DEFAULTS = {"count": [1, 1], "size_mm": [8.0, 40.0], "slices": [1, 1000], "contrast": [0.5, 1.0],
                   "opacity": [0.5, 1.0]}


@dataclass(frozen=True)
class ShapeInsertionConfig:
    """Settings of shape-insertion (defaults; allowed ranges).

    objects: list of {kind (one of KINDS), label (a label name), inside or overlap (label names),
    count ([1, 1]; whole numbers >= 0), size_mm ([8, 40]; > 0), slices ([1, 1000] slices of extent;
    >= 1), contrast ([0.5, 1.0]; signed fractions of the body range within [-2, 2]), opacity
    ([0.5, 1.0]; within [0, 1])} (required); blend_mm: sigma of the blended edge (0.5 mm; [0, 10]);
    exclude_sources_with: label names; training patients holding any of them are not used as raw
    material (e.g. [wire, device]: objects go only into radiographs without real ones, so the
    objects of the synthetic patients are all synthetic).
    """

    objects: tuple = ()
    blend_mm: float = 0.5
    exclude_sources_with: tuple[str, ...] = ()

    def check(self, where: str) -> None:
        require(len(self.objects) > 0, where, "objects", "list the objects to insert, e.g. "
                                                         "[{kind: wire, label: wire, overlap: [heart]}]")
        for i, spec in enumerate(self.objects):
            key = f"objects[{i}]"
            require(isinstance(spec, dict) and set(spec) <= OBJECT_KEYS, where, key,
                    f"a mapping with keys among {sorted(OBJECT_KEYS)}, got {spec!r}")
            require(spec.get("kind") in KINDS, where, f"{key}.kind", f"one of {list(KINDS)}, got {spec.get('kind')!r}")
            require(isinstance(spec.get("label"), str), where, f"{key}.label", "the label name the object is written with")
            require(("inside" in spec) != ("overlap" in spec), where, key, "give exactly one of inside or overlap")
            for name, (low, high) in (("count", (0, 1000)), ("size_mm", (1e-6, 1e4)), ("slices", (1, 1e6)),
                                      ("contrast", (-2, 2)), ("opacity", (0, 1))):
                value = spec.get(name, OBJECT_DEFAULTS[name])
                require(isinstance(value, (list, tuple)) and len(value) == 2 and value[0] <= value[1]
                        and low <= value[0] and value[1] <= high, where, f"{key}.{name}",
                        f"a range [low, high] within [{low:g}, {high:g}], got {value!r}")
        require(0 <= self.blend_mm <= 10, where, "blend_mm", "must lie in [0, 10] mm")


def _plane_coordinates(shape: tuple[int, int], centre: np.ndarray, spacing: np.ndarray, angle: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) [X, Y] in mm: in-plane coordinates relative to ``centre``, rotated by ``angle``."""
    x, y = np.indices(shape, dtype=np.float64)
    dx, dy = (x - centre[0]) * spacing[0], (y - centre[1]) * spacing[1]
    c, s = np.cos(angle), np.sin(angle)
    return c * dx + s * dy, -s * dx + c * dy


def _curve_mask(shape: tuple[int, int], points_mm: np.ndarray, centre: np.ndarray, spacing: np.ndarray,
                width_mm: float) -> np.ndarray:
    """bool [X, Y]: voxels within width/2 of the polyline ``points_mm`` [n, 2] (mm around centre)."""
    mask = np.zeros(shape, dtype=bool)
    dense = np.concatenate([np.linspace(a, b, 16, endpoint=False) for a, b in zip(points_mm[:-1], points_mm[1:])])
    voxels = np.rint(dense / spacing[:2] + centre[:2]).astype(int)
    inside = np.all((voxels >= 0) & (voxels < shape), axis=1)
    mask[voxels[inside, 0], voxels[inside, 1]] = True
    distance = ndimage.distance_transform_edt(~mask, sampling=spacing[:2])
    return distance <= width_mm / 2


def primitive(kind: str, shape: tuple[int, int], centre: np.ndarray, spacing: np.ndarray, size_mm: float,
              rng: np.random.Generator) -> np.ndarray:
    """bool [X, Y]: one primitive of ``kind`` and overall size ``size_mm`` around ``centre`` in the plane."""
    angle = rng.uniform(0, np.pi)
    u, v = _plane_coordinates(shape, centre, spacing, angle)
    half = size_mm / 2
    thin = max(float(spacing[:2].min()) * 1.5, 0.08 * size_mm)
    if kind == "disc":
        b = half * rng.uniform(0.6, 1.0)
        return (u / half) ** 2 + (v / b) ** 2 <= 1
    if kind == "ring":
        r = np.hypot(u, v)
        return (r <= half) & (r >= half - thin)
    if kind == "rectangle":
        return (np.abs(u) <= half) & (np.abs(v) <= half * rng.uniform(0.3, 0.8))
    if kind == "grid":
        box = (np.abs(u) <= half) & (np.abs(v) <= half * 0.35)
        pitch = size_mm / rng.integers(4, 8)
        lattice = (np.abs((u + v) % pitch) < thin / 2) | (np.abs((u - v) % pitch) < thin / 2)
        return box & (lattice | (np.abs(np.abs(v) - half * 0.35) < thin / 2))
    if kind == "polygon":
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = half * rng.uniform(0.5, 1.0, n)
        path = PolygonPath(np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1))
        return path.contains_points(np.stack([u.ravel(), v.ravel()], axis=1)).reshape(shape)
    c, s = np.cos(angle), np.sin(angle)
    if kind == "line":
        ends = np.array([[-half * c, -half * s], [half * c, half * s]])
        return _curve_mask(shape, ends, centre, spacing, thin)
    # wire: a cubic Bezier curve from the centre with random control points
    controls = np.cumsum(rng.normal(0, half / 2, size=(4, 2)), axis=0)
    controls -= controls[0]
    t = np.linspace(0, 1, 64)[:, None]
    curve = ((1 - t) ** 3 * controls[0] + 3 * (1 - t) ** 2 * t * controls[1] + 3 * (1 - t) * t ** 2 * controls[2]
             + t ** 3 * controls[3])
    return _curve_mask(shape, curve, centre, spacing, thin / 2)


class ShapeInsertion:
    """shape-insertion on the given training patients (see the module docstring)."""

    def __init__(self, config: ShapeInsertionConfig, patients: Sequence[VolumePatient], labels: LabelSet,
                 modalities: Sequence[str]):
        excluded = [labels.value(n, "exclude_sources_with") for n in config.exclude_sources_with]
        self.patients = [p for p in patients if not np.isin(p.labels, excluded).any()]
        if not self.patients:
            raise ProceduralError(f"shape-insertion: every one of the {len(patients)} training patients holds one of "
                                  f"{list(config.exclude_sources_with)} (exclude_sources_with): no raw material left")
        self.config, self.label_set = config, labels
        self.specs = []
        for i, spec in enumerate(config.objects):
            where = "inside" if "inside" in spec else "overlap"
            self.specs.append({**OBJECT_DEFAULTS, **spec, "value": labels.value(spec["label"], f"objects[{i}].label"),
                               "region": [labels.value(n, f"objects[{i}].{where}") for n in spec[where]],
                               "cut": where == "inside"})

    def _object(self, rng: np.random.Generator, spec: dict, labels: np.ndarray, spacing: np.ndarray,
                case_id: str) -> np.ndarray:
        """bool [X, Y, Z]: one object of ``spec`` placed in this patient."""
        region = np.isin(labels, spec["region"])
        centre = random_voxel(rng, region)
        if centre is None:
            raise ProceduralError(f"shape-insertion: patient {case_id} has no voxel of {spec['label']!r}'s region "
                                  f"{spec.get('inside', spec.get('overlap'))}")
        plane = primitive(spec["kind"], labels.shape[:2], centre, spacing, rng.uniform(*spec["size_mm"]), rng)
        depth = labels.shape[2]
        extent = int(np.clip(rng.integers(int(spec["slices"][0]), int(spec["slices"][1]) + 1), 1, depth))
        first = int(np.clip(centre[2] - extent // 2, 0, depth - extent))
        mask = np.zeros(labels.shape, dtype=bool)
        mask[:, :, first:first + extent] = plane[:, :, None]
        return mask & region if spec["cut"] else mask

    def make(self, index: int, rng: np.random.Generator) -> VolumePatient:
        source = self.patients[index % len(self.patients)]
        spacing = source.spacing
        ranges = foreground_range(source.images)
        width = (ranges[:, 1] - ranges[:, 0]).astype(np.float32)
        images, labels = source.images.copy(), source.labels.astype(np.int32).copy()
        instances = np.zeros(labels.shape, dtype=np.int32)
        objects = []
        for spec in self.specs:
            for _ in range(int(rng.integers(int(spec["count"][0]), int(spec["count"][1]) + 1))):
                mask = self._object(rng, spec, source.labels, spacing, source.case_id)
                if not mask.any():
                    continue
                alpha = soft_mask(mask, self.config.blend_mm, spacing)
                delta = rng.uniform(*spec["contrast"]) * rng.uniform(*spec["opacity"]) * width
                images += alpha[None] * delta[:, None, None, None]
                labels[mask] = spec["value"]
                instances[mask] = len(objects) + 1
                objects.append({"id": len(objects) + 1, "label": spec["label"], "kind": spec["kind"],
                                "voxels": int(mask.sum())})
        return VolumePatient(f"shapes_{index:04d}", images.astype(np.float32), labels, source.affine.copy(),
                             instances=instances, sources=(source.case_id,), objects=objects)
