"""Errors and warnings raised while reading a dataset.

Two levels, because they call for different reactions:

* `DatasetError` -- the dataset as a whole cannot be read (missing folder, empty folder, unknown
  layout, missing or inconsistent ``dataset.json``, duplicate case ids).  Always fatal.
* `PatientError` -- one patient is unusable (missing modality, disagreeing geometry, bad voxels,
  unreadable file).  Fatal with ``on_error="fail"``; with ``on_error="skip"`` the patient is left
  out with a `DataWarning` and recorded in ``Dataset.skipped``.

Every message starts with the offending file (or folder) followed by the problem.
"""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Base class of every data problem; ``str(err)`` is ``"<file>: <problem>"``."""


class DatasetError(DataError):
    """A dataset-level problem: always fatal."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class PatientError(DataError):
    """A problem confined to one patient (``case_id``); that patient can be skipped."""

    def __init__(self, case_id: str, path: Path | str, problem: str):
        self.case_id = case_id
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem} (patient {case_id})")


class PatientErrors(DataError):
    """Several patients failed validation with ``on_error="fail"``; lists every problem."""

    def __init__(self, errors: list[PatientError]):
        self.errors = list(errors)
        lines = [f"{len(self.errors)} patient(s) failed validation "
                 "(use on_error='skip' / --on-error skip to leave them out):"]
        lines += [f"  {err}" for err in self.errors]
        super().__init__("\n".join(lines))


class DataWarning(UserWarning):
    """A patient was skipped, or something odd but harmless was found."""
