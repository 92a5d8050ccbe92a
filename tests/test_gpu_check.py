"""The GPU check runs end to end (on a CPU with --quick: the script, not the machine, is tested)."""
from benchmarks.gpu_check import main


def test_the_gpu_check_writes_one_table_of_every_step(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--device", "cpu", "--quick", "--skip-parity"]) == 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert table == capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| train_gan.py 16²", "| train_gan.py 16²", "| train_gan.py 32²",
                                                 "| sample_patients.py 16²", "| study U-Net 32²"]
    assert all("s/kimg" in r for r in rows[:3]) and "patients/s" in rows[3] and "ms/step" in rows[4]
