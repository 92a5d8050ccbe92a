"""Patient-level splits: a hold-out test set plus k folds over the rest (the nnU-Net convention).

The cross-validation folds reproduce nnU-Net's ``generate_crossval_split``: case ids sorted,
``KFold(n_splits, shuffle=True, random_state=seed)`` (the first ``n % k`` folds one case larger),
train/val ids in sorted order.  The test cases are drawn first by a seeded permutation of the
sorted ids.  No patient ever appears in two parts of one fold.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.fsutils import atomic_write_json

SPLITS_FORMAT = 1


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: training and validation case ids (sorted)."""

    train: list[str]
    val: list[str]


@dataclass(frozen=True)
class Splits:
    """test: hold-out case ids (sorted); folds: `Fold` list over the remaining cases."""

    seed: int
    test: list[str]
    folds: list[Fold]

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    def fold(self, index: int) -> Fold:
        """Fold ``index`` (0-based); IndexError naming the valid range otherwise."""
        if not 0 <= index < len(self.folds):
            raise IndexError(f"fold {index} does not exist (0..{len(self.folds) - 1})")
        return self.folds[index]

    def to_dict(self) -> dict:
        return {"format": SPLITS_FORMAT, "seed": self.seed, "test": self.test,
                "folds": [{"train": f.train, "val": f.val} for f in self.folds]}

    def to_nnunet(self) -> list[dict]:
        """The folds as nnU-Net's ``splits_final.json`` content (test cases excluded)."""
        return [{"train": f.train, "val": f.val} for f in self.folds]

    def save(self, path: str | Path) -> Path:
        """Write the splits as JSON (atomically); returns the path."""
        atomic_write_json(Path(path), self.to_dict())
        return Path(path)

    @staticmethod
    def load(path: str | Path) -> "Splits":
        """Read a file written by `Splits.save`, checking that no patient is in two parts of a fold."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
            splits = Splits(int(values["seed"]), list(values["test"]),
                            [Fold(list(f["train"]), list(f["val"])) for f in values["folds"]])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable splits file ({type(exc).__name__}: {exc})") from exc
        for i, fold in enumerate(splits.folds):
            overlap = (set(fold.train) & set(fold.val)) | ((set(fold.train) | set(fold.val)) & set(splits.test))
            if overlap:
                raise ValueError(f"{path}: fold {i} puts patients in two parts: {sorted(overlap)}")
        return splits


def kfold_indices(n: int, n_folds: int, seed: int) -> list[np.ndarray]:
    """Validation index arrays of ``KFold(n_folds, shuffle=True, random_state=seed)`` over n items."""
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.sort(order[bounds[i]:bounds[i + 1]]) for i in range(n_folds)]


def make_splits(case_ids: list[str], n_folds: int = 5, seed: int = 12345, test_fraction: float = 0.2) -> Splits:
    """Hold out ``round(test_fraction * n)`` cases for testing, then ``n_folds`` folds over the rest.

    Deterministic for a given set of ids (order of ``case_ids`` does not matter).
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ValueError("case_ids contains duplicates")
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_test = int(round(test_fraction * len(ids)))
    test_positions = np.random.RandomState(seed).permutation(len(ids))[:n_test]
    test = sorted(ids[i] for i in test_positions)
    rest = [c for c in ids if c not in set(test)]
    if len(rest) < n_folds:
        raise ValueError(f"{len(ids)} cases leave {len(rest)} after the test split: too few for {n_folds} folds")
    folds = []
    for val_index in kfold_indices(len(rest), n_folds, seed):
        val = [rest[i] for i in val_index]
        folds.append(Fold(train=[c for c in rest if c not in set(val)], val=val))
    return Splits(seed=seed, test=test, folds=folds)


def minimum_patients(n_folds: int = 5, test_fraction: float = 0.2, train_per_fold: int = 1) -> int:
    """The fewest patients for which `make_splits` leaves >= 1 test patient and, in every fold, >= 1
    validation and >= ``train_per_fold`` training patients."""
    for n in range(2, 1_000_000):
        n_test = int(round(test_fraction * n))
        rest = n - n_test
        if n_test >= 1 and rest >= n_folds and rest - -(-rest // n_folds) >= train_per_fold:
            return n
    raise ValueError(f"no dataset size satisfies n_folds {n_folds}, test_fraction {test_fraction}")


def load_or_make_splits(path: str | Path, case_ids: list[str], n_folds: int = 5, seed: int = 12345,
                        test_fraction: float = 0.2) -> Splits:
    """The splits stored at ``path``, or new ones (`make_splits`) saved there if the file is absent.

    A stored file must cover exactly ``case_ids`` (ValueError naming the file and the differing
    patients otherwise), so every stage of a study trains and tests on the same patients.
    """
    path = Path(path)
    if not path.is_file():
        splits = make_splits(case_ids, n_folds, seed, test_fraction)
        splits.save(path)
        return splits
    splits = Splits.load(path)
    stored = set(splits.test) | {c for fold in splits.folds for c in fold.train + fold.val}
    if stored != set(case_ids):
        extra, missing = sorted(stored - set(case_ids)), sorted(set(case_ids) - stored)
        raise ValueError(f"{path}: splits were made for other patients (only in the file: {extra[:5]}, "
                         f"only in the dataset: {missing[:5]}); delete the file to make new splits")
    return splits


def read_case_ids(path: str | Path, flag: str) -> list[str]:
    """The case ids of a text file, one per line, ``#`` starting a comment, in file order without
    repeats; ValueError naming ``flag`` (the option that gave the file) when it cannot be read."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror}") from None
    return list(dict.fromkeys(line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()))
