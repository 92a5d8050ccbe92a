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

import functools
import os
import sys
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
        lines = [f"{len(self.errors)} patient(s) failed validation (stylepair-data and train_gan.py leave them out "
                 "with --on-error skip; a study needs them fixed or moved out of the dataset folder, its splits "
                 "cover every patient):"]
        lines += [f"  {err}" for err in self.errors]
        super().__init__("\n".join(lines))


class DataWarning(UserWarning):
    """A patient was skipped, or something odd but harmless was found."""


DEBUG_ENV = "STYLEPAIR_DEBUG"  # set to 1 to see the traceback of an unexpected error


def one_line_errors(prog: str, interrupted: str = "finished work is kept; rerun the same command to continue"):
    """Decorator of a command's ``main(argv) -> int``: what the command did not turn into a message
    itself becomes one line on stderr instead of a traceback -- Ctrl-C (exit 130, with what it
    leaves), an operating-system error such as a full disk or a read-only folder (exit 1, naming
    the file), anything else (exit 1, with the hint to set ``STYLEPAIR_DEBUG=1`` for the
    traceback).  argparse's own exits pass through."""
    def decorate(main):
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            if os.environ.get(DEBUG_ENV):
                return main(argv)
            try:
                return main(argv)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
                return 130
            except OSError as exc:
                where = f"{exc.filename}: " if exc.filename else ""
                print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
                return 1
            except Exception as exc:  # noqa: BLE001 -- the point: no traceback for the user
                print(f"{prog}: error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 to see where)", file=sys.stderr)
                return 1
        return run
    return decorate
