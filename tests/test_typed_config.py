"""The one config toolkit: mappings -> dataclasses with key paths in errors, dotted overrides, and the
same behaviour in every config that uses it (GAN training, preprocessing, the study, synthesisers)."""
from dataclasses import dataclass, field

import pytest

from training.config import TrainConfig, load_preset, resolve_config
from training.data.preprocess import PreprocessConfig, load_preprocess_config
from training.data.typed_config import (ConfigError, apply_overrides, from_mapping, parse_override, set_dotted,
                                        to_mapping)


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    window: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class Outer:
    name: str
    count: int = 1
    flag: bool = False
    sizes: tuple[int, ...] = (2, 2)
    limit: int | None = None
    k: tuple[int | str, ...] = ()
    inner: Inner = Inner()
    per_key: dict[str, Inner] = field(default_factory=dict)
    items: list[Inner] = field(default_factory=list)


def test_a_nested_mapping_builds_the_typed_dataclass():
    built = from_mapping(Outer, {"name": "x", "count": 3.0, "sizes": [1, 2, 3], "limit": None, "k": [2, "1x"],
                                 "inner": {"rate": 1}, "per_key": {"T2": {"window": [0, 9]}},
                                 "items": [{"rate": 2}]}, "f.yaml")
    assert built == Outer(name="x", count=3, sizes=(1, 2, 3), k=(2, "1x"), inner=Inner(rate=1.0),
                          per_key={"T2": Inner(window=(0.0, 9.0))}, items=[Inner(rate=2.0)])
    assert isinstance(built.count, int) and isinstance(built.inner.rate, float)
    assert from_mapping(Outer, to_mapping(built), "again") == built      # to_mapping is the inverse


@pytest.mark.parametrize("values, message", [
    ({"name": "x", "inner": {"rat": 1}}, "f.yaml: inner.rat: unknown key (known keys: rate, window)"),
    ({"name": "x", "count": 2.5}, "f.yaml: count: expected an integer (a whole number), got 2.5"),
    ({"name": "x", "flag": "yes"}, "f.yaml: flag: expected true or false, got 'yes'"),
    ({"name": "x", "inner": {"window": [0, 1, 2]}}, "f.yaml: inner.window: expected a list of 2 values"),
    ({"name": "x", "items": [{}, {"rate": "fast"}]}, "f.yaml: items[1].rate: expected a number, got 'fast'"),
    ({"name": "x", "per_key": {"T2": {"rate": None}}}, "f.yaml: per_key.T2.rate: expected a number, got None"),
    ({"name": "x", "inner": 3}, "f.yaml: inner: expected a mapping, got int 3"),
    ({"count": 2}, "f.yaml: name: missing"),
])
def test_errors_name_the_source_and_the_key_path(values, message):
    with pytest.raises(ConfigError) as error:
        from_mapping(Outer, values, "f.yaml")
    assert str(error.value).startswith(message)


def test_dotted_overrides_reach_sections_list_items_and_named_presets():
    values = {"arms": [{"name": "pair", "psi": 1.0}, {"name": "gan", "psi": 1.0}], "train": None,
              "preprocess": "ct"}
    out = apply_overrides(values, ["arms.gan.psi=0.7", "arms.0.psi=0.5", "train.iterations=7",
                                   "preprocess.resolution=32"],
                          expand={"preprocess": lambda name: {"preset": name, "resolution": 256}})
    assert [a["psi"] for a in out["arms"]] == [0.5, 0.7] and out["train"] == {"iterations": 7}
    assert out["preprocess"] == {"preset": "ct", "resolution": 32}
    assert values["arms"][1]["psi"] == 1.0 and values["train"] is None       # the input is not changed
    assert parse_override("k=[2, '1x']") == ("k", [2, "1x"]) and parse_override("x=") == ("x", None)
    with pytest.raises(ConfigError, match="no list item 'oracle'"):
        apply_overrides(values, ["arms.oracle.psi=1"])
    with pytest.raises(ConfigError, match="is not key=value"):
        parse_override("train.iterations")
    with pytest.raises(ConfigError, match="arms.0.psi.x: arms.0.psi is float 1.0, which has no keys"):
        set_dotted(values, "arms.0.psi.x", 1, "--set")


def test_every_config_reads_and_overrides_the_same_way(tmp_path):
    """The GAN config, a preprocessing preset and the study take the same KEY=VALUE strings and give
    the same kind of error for a typo."""
    from segmentation.study.study_config import StudyConfigError, load_study_config

    gan = from_mapping(TrainConfig, apply_overrides(to_mapping(load_preset("tiny")), ["network.channel_max=32"]),
                       "--set")
    assert resolve_config(gan).network.channel_max == 32
    assert load_preprocess_config("ct", ["ct_norm.upper=400"]).ct_norm.upper == 400.0
    study = tmp_path / "s.yaml"
    study.write_text("datasets: [{path: phantoms, preprocess: ct}]\n")
    assert load_study_config(study, ["datasets.phantoms.preprocess.ct_norm.upper=400"]
                             ).datasets[0].preprocess.ct_norm.upper == 400.0
    for read in (lambda: from_mapping(TrainConfig, apply_overrides(to_mapping(gan), ["network.chanel_max=32"]), "--set"),
                 lambda: load_preprocess_config("ct", ["ct_norm.uper=400"]),
                 lambda: load_study_config(study, ["datasets.phantoms.preprocess.ct_norm.uper=400"])):
        with pytest.raises(ConfigError, match=r"\.(chanel_max|uper): unknown key \(known keys: "):
            read()
    assert issubclass(StudyConfigError, ConfigError)
    assert from_mapping(PreprocessConfig, to_mapping(load_preprocess_config("ct")), "x") == load_preprocess_config("ct")


def test_whole_numbers_of_a_preprocessing_config_keep_the_keys_of_caches_and_results_made_before():
    """Before the typed reader, IntensityNorm(**yaml) kept 2000 as an int, and cache keys and study
    fingerprints hash the JSON text: reading the same YAML must give the same keys."""
    from training.data.preprocess import IntensityNorm, preprocess_config_from_dict

    written = {"resolution": 128, "min_label_fraction": 0,
               "ct_norm": {"method": "window", "lower": -1000, "upper": 2000, "foreground_only": False},
               "modality_norm": {"T2": {"method": "window", "lower": 0, "upper": 1900, "foreground_only": False}}}
    before = PreprocessConfig(resolution=128, min_label_fraction=0, ct_norm=IntensityNorm(**written["ct_norm"]),
                              modality_norm={"T2": IntensityNorm(**written["modality_norm"]["T2"])})
    read = preprocess_config_from_dict(written)
    assert read.cache_key(["CT", "T2"]) == before.cache_key(["CT", "T2"])
    assert to_mapping(read) == to_mapping(before) and repr(to_mapping(read)) == repr(to_mapping(before))
