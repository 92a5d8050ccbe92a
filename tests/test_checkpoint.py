"""Snapshot I/O: round trips, atomicity, corruption fallback, pruning, and pickles refused."""
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from training import checkpoint as ckpt


def _content(seed: int = 0) -> ckpt.SnapshotContent:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.0, 0.99))
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    content = ckpt.SnapshotContent()
    content.tensors["G"] = dict(net.state_dict())
    tensors, doc = ckpt.optimizer_state_to_files(opt)
    content.tensors["optim_G"] = tensors
    content.documents["optim_G"] = doc
    content.documents["progress"] = {"nimg": 64, "pl_mean": 0.25}
    content.documents["metrics"] = {"fid": 10.0 - seed}
    return content


def test_snapshot_round_trip_and_manifest(tmp_path):
    content = _content()
    snap = ckpt.write_snapshot(tmp_path, 64, content)
    assert snap.name == "snapshot-000000064"
    manifest = ckpt.verify_snapshot(snap).manifest
    assert set(manifest["files"]) == {"G.safetensors", "optim_G.safetensors", "optim_G.json",
                                      "progress.json", "metrics.json"}
    back = ckpt.read_snapshot(snap)
    for key, value in content.tensors["G"].items():
        assert torch.equal(back.tensors["G"][key], value)
    assert back.documents["progress"] == {"nimg": 64, "pl_mean": 0.25}
    # the optimizer state comes back exactly and loads into a fresh optimizer
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    opt = torch.optim.Adam(net.parameters(), lr=5.0)
    opt.load_state_dict(ckpt.optimizer_state_from_files(back.tensors["optim_G"], back.documents["optim_G"]))
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["betas"] == (0.0, 0.99)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], content.tensors["optim_G"]["0.exp_avg"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp folders left


def test_rng_state_round_trip():
    gen = torch.Generator().manual_seed(7)
    tensors, doc = ckpt.capture_rng_state({"data": gen})
    json.dumps(doc)                                          # JSON-able
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    torch.manual_seed(99), np.random.seed(99), random.seed(99), gen.manual_seed(99)
    ckpt.restore_rng_state(tensors, doc, {"data": gen})
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and torch.equal(got[3], expected[3])


def test_corrupted_snapshot_falls_back_to_previous_good_one(tmp_path):
    good = ckpt.write_snapshot(tmp_path, 64, _content(0))
    bad = ckpt.write_snapshot(tmp_path, 128, _content(1))
    with open(bad / "G.safetensors", "r+b") as handle:       # flip bytes in the weights
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.warns(ckpt.SnapshotWarning, match="checksum mismatch"):
        assert ckpt.latest_good_snapshot(tmp_path).path == good
    with pytest.warns(ckpt.SnapshotWarning):                 # naming the bad one falls back too
        assert ckpt.latest_good_snapshot(bad).path == good


def test_partial_snapshot_is_skipped(tmp_path):
    good = ckpt.write_snapshot(tmp_path, 64, _content(0))
    partial = ckpt.write_snapshot(tmp_path, 128, _content(1))
    (partial / "optim_G.json").unlink()                      # e.g. a copy that was cut short
    (tmp_path / ".snapshot-000000192.tmp-abc").mkdir()      # an interrupted write: ignored
    with pytest.warns(ckpt.SnapshotWarning, match="missing"):
        assert ckpt.latest_good_snapshot(tmp_path).path == good
    (good / ckpt.MANIFEST).unlink()
    with pytest.warns(ckpt.SnapshotWarning), pytest.raises(ckpt.CheckpointError, match="no usable"):
        ckpt.latest_good_snapshot(tmp_path)


class _Exploit:
    """Unpickling this runs code (creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_files_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weights": _Exploit(marker)})
    snap = ckpt.write_snapshot(tmp_path / "run", 64, _content())
    # plant the pickle as the weights file and fix the manifest so the checksum passes
    (snap / "G.safetensors").write_bytes(payload)
    manifest = json.loads((snap / ckpt.MANIFEST).read_text())
    manifest["files"]["G.safetensors"] = ckpt.sha256_of(snap / "G.safetensors")
    (snap / ckpt.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError, match="pickle"):
        ckpt.read_snapshot(snap)
    # a torch.save archive is refused too, and a pickle file given as the checkpoint path
    torch.save({"w": torch.zeros(2)}, snap / "G.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="pickle"):
        ckpt.read_tensors(snap / "G.safetensors")
    (tmp_path / "network-snapshot.pkl").write_bytes(payload)
    with pytest.raises(ckpt.CheckpointError, match="pickles are never loaded"):
        ckpt.load_generator(tmp_path / "network-snapshot.pkl")
    assert not marker.exists()


def test_prune_keeps_last_n_and_best(tmp_path):
    for i, fid in enumerate([5.0, 1.0, 4.0, 3.0, 6.0]):
        content = _content()
        content.documents["metrics"] = {"fid": fid}
        ckpt.write_snapshot(tmp_path, (i + 1) * 100, content)
    ckpt.prune_snapshots(tmp_path, keep_last=2, metric_key="fid", lower_is_better=True)
    assert [p.name for p in ckpt.list_snapshots(tmp_path)] == [
        "snapshot-000000200", "snapshot-000000400", "snapshot-000000500"]


def test_rewriting_a_snapshot_replaces_it_atomically(tmp_path):
    ckpt.write_snapshot(tmp_path, 64, _content(0))
    snap = ckpt.write_snapshot(tmp_path, 64, _content(1))
    assert ckpt.read_json(snap / "metrics.json") == {"fid": 9.0}
    assert [p.name for p in tmp_path.iterdir()] == ["snapshot-000000064"]


def test_a_manifest_listing_files_outside_the_snapshot_is_refused(tmp_path):
    snap = ckpt.write_snapshot(tmp_path, 64, _content())
    (tmp_path / "outside.txt").write_text("secret")
    for name in ("../outside.txt", "/etc/hostname", "sub/../../outside.txt"):
        manifest = json.loads((snap / ckpt.MANIFEST).read_text())
        manifest["files"][name] = "0" * 64
        (snap / ckpt.MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ckpt.CheckpointError, match="which is not a file of the snapshot folder"):
            ckpt.verify_snapshot(snap)
        del manifest["files"][name]
        (snap / ckpt.MANIFEST).write_text(json.dumps(manifest))
    (snap / "progress.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ckpt.CheckpointError, match="nested too deeply"):
        ckpt.read_json(snap / "progress.json")
