"""The one atomic write: a reader sees the old file or the new one, never half, and no debris."""
import pytest

from training.data.fsutils import atomic_write, atomic_write_json, atomic_write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"runs": 1})

    def half_then_fail(temporary):
        temporary.write_text('{"runs": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == '{\n  "runs": 1\n}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_writers_that_read_the_ending_get_it_on_the_temporary_name(tmp_path):
    seen = []
    atomic_write(tmp_path / "volume.nii.gz", lambda temporary: seen.append(temporary.name) or temporary.write_bytes(b"x"))
    assert seen[0].endswith(".tmp.nii.gz") and seen[0].startswith(".volume.nii.gz.")
    assert atomic_write_text(tmp_path / "a" / "b.txt", "é\n").read_text(encoding="utf-8") == "é\n"
