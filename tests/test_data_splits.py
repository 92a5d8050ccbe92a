"""Patient-level splits: nnU-Net's k-fold convention, hold-out test set, JSON round trip."""
import json

import numpy as np
import pytest

from training.data import Splits, load_or_make_splits, make_splits
from training.data.splits import kfold_indices

IDS = [f"case_{i:03d}" for i in range(23)]


def test_every_patient_in_exactly_one_part():
    splits = make_splits(IDS, n_folds=5, seed=12345, test_fraction=0.2)
    assert len(splits.test) == 5 and splits.test == sorted(splits.test)
    rest = sorted(set(IDS) - set(splits.test))
    vals = [c for fold in splits.folds for c in fold.val]
    assert sorted(vals) == rest  # each remaining patient validates exactly once
    assert [len(f.val) for f in splits.folds] == [4, 4, 4, 3, 3]
    for fold in splits.folds:
        assert not set(fold.train) & set(fold.val)
        assert sorted(fold.train + fold.val) == rest and fold.train == sorted(fold.train)


def test_deterministic_order_independent_and_seeded():
    a = make_splits(IDS)
    assert make_splits(list(reversed(IDS))) == a
    assert make_splits(IDS, seed=1) != a
    assert make_splits(IDS, test_fraction=0.0).test == []


def test_kfold_matches_the_nnunet_convention():
    # nnU-Net: KFold(5, shuffle=True, random_state=12345) over sorted keys, i.e. a RandomState
    # shuffle of arange(n) cut into consecutive folds, the first n % k one longer.
    order = np.arange(12)
    np.random.RandomState(12345).shuffle(order)
    expected = [np.sort(order[a:b]) for a, b in [(0, 3), (3, 6), (6, 8), (8, 10), (10, 12)]]
    for got, want in zip(kfold_indices(12, 5, 12345), expected):
        np.testing.assert_array_equal(got, want)
    splits = make_splits([f"c{i:02d}" for i in range(12)], test_fraction=0.0)
    assert [f.val for f in splits.folds] == [[f"c{i:02d}" for i in fold] for fold in expected]
    assert splits.to_nnunet()[0] == {"train": splits.folds[0].train, "val": splits.folds[0].val}


def test_json_round_trip_and_checks(tmp_path):
    splits = make_splits(IDS)
    path = splits.save(tmp_path / "splits.json")
    assert Splits.load(path) == splits
    assert splits.fold(4) == splits.folds[4]
    with pytest.raises(IndexError, match="0..4"):
        splits.fold(5)
    values = json.loads(path.read_text())
    values["folds"][0]["val"].append(values["test"][0])
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match="fold 0 puts patients in two parts"):
        Splits.load(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="not a readable splits file"):
        Splits.load(path)


def test_bad_requests():
    with pytest.raises(ValueError, match="duplicates"):
        make_splits(["a", "a", "b"])
    with pytest.raises(ValueError, match="too few for 5 folds"):
        make_splits(IDS[:5], test_fraction=0.2)
    with pytest.raises(ValueError, match="n_folds"):
        make_splits(IDS, n_folds=1)


def test_load_or_make_splits_reuses_the_file(tmp_path):
    path = tmp_path / "splits.json"
    first = load_or_make_splits(path, IDS)
    assert path.is_file() and first == make_splits(IDS)
    assert load_or_make_splits(path, list(reversed(IDS)), seed=999) == first  # the file wins
    with pytest.raises(ValueError, match=r"only in the dataset: \['case_999'\]"):
        load_or_make_splits(path, IDS + ["case_999"])
