"""Procedural synthesis: synthetic patients made from real training patients by rules, no training.

The second kind of generator next to `gan` (see `procedural.base` for the interface):

    label-to-image      new contrasts painted on real label maps (SynthSeg-style domain randomisation)
    lesion-insertion    lesions grown inside healthy anatomy with the contrast of real lesions
    shape-insertion     foreign-object primitives placed where the anatomy allows
    cut-and-paste       real objects copied into another patient

    synthesiser = build_synthesiser("lesion-insertion", "configs/procedural/phantom-lesions.yaml",
                                    patients, LabelSet(names, values), modalities)
    patient = synthesiser.make(j, np.random.default_rng([seed, j]))
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from procedural.base import LabelSet, ProceduralError, Synthesiser, VolumePatient
from procedural.config import config_from_mapping
from procedural.cut_and_paste import CutAndPaste, CutAndPasteConfig
from procedural.label_to_image import LabelToImage, LabelToImageConfig
from procedural.lesion_insertion import LesionInsertion, LesionInsertionConfig
from procedural.shape_insertion import ShapeInsertion, ShapeInsertionConfig

SYNTHESISERS = {
    "label-to-image": (LabelToImageConfig, LabelToImage),
    "lesion-insertion": (LesionInsertionConfig, LesionInsertion),
    "shape-insertion": (ShapeInsertionConfig, ShapeInsertion),
    "cut-and-paste": (CutAndPasteConfig, CutAndPaste),
}

__all__ = ["LabelSet", "ProceduralError", "SYNTHESISERS", "Synthesiser", "VolumePatient", "build_synthesiser",
           "load_synthesiser_config"]


def load_synthesiser_config(name: str, source: str | Path | Mapping | None):
    """The config dataclass of synthesiser ``name`` from a YAML file, a mapping or None (defaults)."""
    if name not in SYNTHESISERS:
        raise ProceduralError(f"unknown procedural synthesiser {name!r}; choose from {sorted(SYNTHESISERS)}")
    return config_from_mapping(SYNTHESISERS[name][0], source)


def build_synthesiser(name: str, config, patients: Sequence[VolumePatient], labels: LabelSet,
                      modalities: Sequence[str]) -> Synthesiser:
    """Synthesiser ``name`` with ``config`` (a config object, a YAML path, a mapping or None) on the
    training ``patients`` (at least one)."""
    if not patients:
        raise ProceduralError(f"{name}: needs at least one real training patient")
    config_cls, synthesiser_cls = SYNTHESISERS.get(name, (None, None))
    if config_cls is None:
        raise ProceduralError(f"unknown procedural synthesiser {name!r}; choose from {sorted(SYNTHESISERS)}")
    if not isinstance(config, config_cls):
        config = config_from_mapping(config_cls, config)
    return synthesiser_cls(config, patients, labels, modalities)
