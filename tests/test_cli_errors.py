"""What a user sees when something goes wrong that the commands did not foresee: one line, an exit
status, what is kept -- no traceback (unless STYLEPAIR_DEBUG=1)."""
import errno

import pytest

from segmentation.study import runner
from segmentation.report.cli_report import main as report_main
from segmentation.study.cli_study import main as study_main
from training.data.cli import main as data_main
from training.data.errors import one_line_errors

MICRO = ["configs/study/micro.yaml", "--allow-weak-design", "--quiet", "--set", "train.iterations=2",
         "--set", "splits.folds=[0]"]


def test_a_full_disk_while_writing_results_is_one_line(tmp_path, monkeypatch, capsys):
    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(runner, "atomic_write_json", full)
    assert study_main(MICRO + ["--results", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("run_study.py: error: ") and err.endswith("No space left on device")
    assert "study.json" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_ctrl_c_in_a_study_is_one_line_with_what_it_keeps(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(runner, "execute_run", interrupted)
    assert study_main(MICRO + ["--results", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err
    assert "run_study.py: interrupted; finished work is kept; rerun the same command to continue" in err
    assert (tmp_path / "r" / "cases.csv").is_file()  # the table of whatever finished is still written


def test_an_unexpected_error_is_one_line_and_the_debug_switch_shows_the_traceback(monkeypatch, capsys):
    @one_line_errors("tool")
    def broken(argv=None):
        return {}["missing"]
    assert broken([]) == 1
    assert capsys.readouterr().err.strip() == "tool: error: KeyError: 'missing' (set STYLEPAIR_DEBUG=1 to see where)"
    monkeypatch.setenv("STYLEPAIR_DEBUG", "1")
    with pytest.raises(KeyError):
        broken([])


def test_a_read_only_output_folder_is_one_line(tmp_path, monkeypatch, capsys):
    from training.data import cli

    def read_only(out_dir, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(out_dir))
    monkeypatch.setattr(cli, "write_phantom_dataset", read_only)
    assert data_main(["phantoms", str(tmp_path / "ph"), "--patients", "1"]) == 1
    assert capsys.readouterr().err.strip() == f"stylepair-data: error: {tmp_path / 'ph'}: Permission denied"


def test_report_of_a_folder_without_results_is_one_line(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
