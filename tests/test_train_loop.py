"""The training loop end to end on tiny phantom data: variants, exact resume, refusals, signals."""
import json
import shutil
import signal

import pytest
import torch

from training import checkpoint as ckpt
from training.cli_train import main
from training.config import ConfigError, load_preset, resolve_config, with_overrides

from tiny import TINY_GAN_ARGS

@pytest.fixture(scope="module")
def other_phantoms(tmp_path_factory):
    from training.data import write_phantom_dataset
    return str(write_phantom_dataset(tmp_path_factory.mktemp("data2") / "phantoms", n_patients=3,
                                     shape=(32, 32, 8), seed=2))


def _weights(run_dir):
    snap = ckpt.latest_good_snapshot(run_dir)
    content = ckpt.read_snapshot(snap)
    return snap, content


def test_dry_run_prints_the_resolved_config(capsys, tmp_path, phantoms):
    assert main(TINY_GAN_ARGS + ["--variant", "mask", "--data", phantoms, "--out", str(tmp_path / "r"),
                        "--gamma", "0.5", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "channel_base: 128" in text and "r1_gamma: 0.5" in text and "variant: mask" in text
    assert not (tmp_path / "r").exists()


def test_auto_rules_and_override_errors():
    cfg = load_preset("auto")
    cfg.resolution = 256
    resolved = resolve_config(cfg, num_processes=1)
    assert resolved.batch == 16 and resolved.network.channel_base == 16384
    assert resolved.loss.r1_gamma == pytest.approx(0.0002 * 256 ** 2 / 16)   # 0.8192
    assert resolved.optim.g_lr == 0.0025 and resolved.ema_kimg == pytest.approx(5.0)
    assert resolve_config(cfg, num_processes=8).batch == 64
    assert resolved.variant != "mask" and resolved.loss.pl_weight == 2.0
    cfg.variant = "mask"
    assert resolve_config(cfg).loss.pl_weight == 0.0          # path length hurts masks (measured)
    cfg = with_overrides(cfg, [("loss.pl_weight", 1.5)])
    assert resolve_config(cfg).loss.pl_weight == 1.5          # an explicit weight is kept
    with pytest.raises(ConfigError, match="network.chanel_base: unknown key"):
        with_overrides(cfg, [("network.chanel_base", 4)])
    with pytest.raises(ConfigError, match="batch: expected an integer"):
        with_overrides(cfg, [("batch", "many")])
    assert with_overrides(cfg, [("lr", 0.001)]).optim.d_lr == 0.001       # an alias sets both rates


def test_bad_cli_input_gives_clear_errors(capsys, tmp_path, phantoms):
    with pytest.raises(SystemExit):
        main(TINY_GAN_ARGS + ["--variant", "mask", "--data", phantoms, "--out", str(tmp_path),
                     "--set", "loss.gama=1", "--dry-run"])
    assert "command line: loss.gama: unknown key" in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["baseline", "mask", "conditional"])
def test_each_variant_trains_a_few_steps(tmp_path, phantoms, variant):
    run = tmp_path / variant
    assert main(TINY_GAN_ARGS + ["--variant", variant, "--data", phantoms, "--out", str(run),
                        "--cond", "slice-position", "--kimg", "0.012", "--p", "0.3"]) == 0
    snap, content = _weights(run)
    assert content.documents["progress"]["nimg"] == 12
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 3
    for record in stats:
        for key in ("loss/G", "loss/D", "scores/real", "scores/fake", "timing/sec_per_kimg"):
            assert torch.isfinite(torch.tensor(record[key])), (key, record)
    assert (run / "samples-latest.png").is_file() and (run / "config.yaml").is_file()
    G, info = ckpt.load_generator(run)
    assert info.variant == variant and info.cond == "slice-position" and info.kimg == 0.012
    z, c = torch.randn(2, G.z_dim), torch.rand(2, 1)
    mask = -torch.ones(2, 6, 16, 16) if variant == "conditional" else None
    if mask is not None:
        mask[:, 0] = 1
    out = G(z, c, mask=mask, noise_mode="const")
    channels = {"baseline": 4 + 6, "mask": 6, "conditional": 4}[variant]
    assert out.shape == (2, channels, 16, 16) and torch.isfinite(out).all()
    # the generator-only export (what checkpoints/tiny-* hold) loads to the same generator
    exported = ckpt.export_generator(run, tmp_path / "export")
    assert sorted(p.name for p in exported.iterdir()) == [
        "G_ema.safetensors", "config.json", "dataset.json", "manifest.json", "metrics.json",
        "progress.json"]
    G2, info2 = ckpt.load_generator(tmp_path / "export")
    assert torch.equal(G2(z, c, mask=mask, noise_mode="const"), out)
    assert info2.sha256 == info.sha256 and info2.dataset.slices_per_patient == info.dataset.slices_per_patient


def test_resume_continues_exactly(tmp_path, phantoms):
    # 8 iterations straight vs 4 + stop + resume + 4: lazy R1 and PL, ADA updates, EMA ramp-up,
    # and gradient accumulation (batch 4 = 2 x 2) are all crossed by the interruption.
    common = TINY_GAN_ARGS + ["--variant", "conditional", "--data", phantoms, "--cond", "slice-position",
                     "--set", "loss.r1_interval=2", "--set", "augment.speed_kimg=0.05",
                     "--p", "0.2", "--seed", "3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(common + ["--out", str(straight), "--kimg", "0.032"]) == 0
    assert main(common + ["--out", str(split), "--kimg", "0.016"]) == 0
    assert main(["--resume", str(split), "--kimg", "0.032", "--no-tensorboard",
                 "--threads", "1"]) == 0
    _, a = _weights(straight)
    _, b = _weights(split)
    for name in ("G", "G_ema", "D", "optim_G", "optim_D"):
        assert a.tensors[name].keys() == b.tensors[name].keys()
        for key in a.tensors[name]:
            assert torch.equal(a.tensors[name][key], b.tensors[name][key]), (name, key)
    for key in ("nimg", "batch_idx", "pl_mean", "augment_p", "ada"):
        assert a.documents["progress"][key] == b.documents["progress"][key], key
    assert a.documents["progress"]["augment_p"] != 0.2          # ADA did move p


def test_incompatible_resume_is_refused_unless_forced(tmp_path, phantoms, other_phantoms, capsys):
    run = tmp_path / "run"
    base = TINY_GAN_ARGS + ["--variant", "mask", "--data", phantoms]
    assert main(base + ["--out", str(run), "--kimg", "0.004"]) == 0
    assert main(["--resume", str(run), "--kimg", "0.008", "--gamma", "3.0",
                 "--no-tensorboard"]) == 2
    assert "loss.r1_gamma: saved" in capsys.readouterr().err
    assert main(["--resume", str(run), "--kimg", "0.008", "--data", other_phantoms,
                 "--no-tensorboard"]) == 2
    assert "dataset: saved" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="force-resume"):
        assert main(["--resume", str(run), "--kimg", "0.008", "--gamma", "3.0", "--force-resume",
                     "--no-tensorboard"]) == 0
    # a generator-only export cannot be resumed
    ckpt.export_generator(run, tmp_path / "export")
    assert main(["--resume", str(tmp_path / "export"), "--kimg", "0.008",
                 "--no-tensorboard"]) == 2
    assert "generator-only export" in capsys.readouterr().err
    # a fresh run into a directory that holds snapshots is refused too
    with pytest.raises(SystemExit):
        main(base + ["--out", str(run), "--kimg", "0.004"])


def test_sigterm_writes_a_snapshot_and_stops(tmp_path, phantoms, monkeypatch):
    from training.loop import GanTrainer

    original = GanTrainer.train_step

    def step_then_signal(self):
        stats = original(self)
        if self.progress.batch_idx == 2:
            signal.raise_signal(signal.SIGTERM)
        return stats

    monkeypatch.setattr(GanTrainer, "train_step", step_then_signal)
    run = tmp_path / "run"
    assert main(TINY_GAN_ARGS + ["--variant", "mask", "--data", phantoms, "--out", str(run),
                        "--kimg", "1"]) == 130
    snap, content = _weights(run)
    assert content.documents["progress"]["nimg"] == 8
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL     # handler restored


@pytest.mark.parametrize("mode, p", [("none", 0.0), ("fixed", 0.5)])
def test_augmentation_modes_keep_p(tmp_path, phantoms, mode, p):
    run = tmp_path / mode
    assert main(TINY_GAN_ARGS + ["--variant", "mask", "--data", phantoms, "--out", str(run),
                        "--kimg", "0.016", "--aug", mode, "--p", str(p),
                        "--set", "augment.speed_kimg=0.01"]) == 0
    _, content = _weights(run)
    assert content.documents["progress"]["augment_p"] == p and content.documents["progress"]["ada"] is None


def test_ema_update_follows_the_half_life_with_ramp_up(phantoms, tmp_path):
    from training.cli_train import build_config, build_parser
    from training.loop import GanTrainer
    from training.training_data import open_training_data

    args = build_parser().parse_args(TINY_GAN_ARGS + ["--variant", "mask", "--data", phantoms,
                                             "--set", "ema_kimg=1.0"])
    cfg = build_config(args, num_processes=1)
    trainer = GanTrainer(cfg, tmp_path / "run", open_training_data(cfg), tensorboard=False)
    param, ema = next(trainer.G.parameters()), next(trainer.G_ema.parameters())
    with torch.no_grad():
        param.add_(1.0)
    before = ema.detach().clone()
    trainer.progress.nimg = 400                 # ramp-up: horizon min(1000, 400 * 0.05) = 20 images
    trainer.update_ema()
    beta = 0.5 ** (cfg.batch / 20.0)
    assert torch.allclose(ema, param.detach() + beta * (before - param.detach()), atol=1e-6)
    for b_ema, b in zip(trainer.G_ema.buffers(), trainer.G.buffers()):
        assert torch.equal(b_ema, b)           # buffers are copied, not averaged


def test_lazy_regularisation_schedule_and_adam_correction(phantoms, tmp_path):
    from training.cli_train import build_config, build_parser
    from training.loop import GanTrainer, Phase, build_phases
    from training.training_data import open_training_data

    args = build_parser().parse_args(TINY_GAN_ARGS + ["--variant", "conditional", "--data", phantoms])
    cfg = build_config(args, num_processes=1)
    assert build_phases(cfg) == [Phase("Gmain", "G", 1), Phase("Greg", "G", 4),
                                 Phase("Dmain", "D", 1), Phase("Dreg", "D", 16)]
    trainer = GanTrainer(cfg, tmp_path / "run", open_training_data(cfg), tensorboard=False)
    for network, k in (("G", 4), ("D", 16)):            # StyleGAN2: lr and betas scaled by k / (k + 1)
        group = trainer.opt[network].param_groups[0]
        assert group["lr"] == pytest.approx(0.0025 * k / (k + 1))
        assert group["betas"] == pytest.approx((0.0, 0.99 ** (k / (k + 1))))
    off = build_config(build_parser().parse_args(TINY_GAN_ARGS + ["--variant", "mask", "--data", phantoms,
                                                         "--gamma", "0"]), 1)   # mask: path length off by default
    assert [p.name for p in build_phases(off)] == ["Gboth", "Dboth"]
    assert GanTrainer(off, tmp_path / "off", open_training_data(off),
                      tensorboard=False).opt["G"].param_groups[0]["lr"] == pytest.approx(0.0025)


def test_tensorboard_logs_losses_scores_p_timing_memory_metrics_and_grids(tmp_path, phantoms):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from training.data import PHANTOM_MODALITIES

    run = tmp_path / "run"
    with_tensorboard = [arg for arg in TINY_GAN_ARGS if arg != "--no-tensorboard"]
    assert main(with_tensorboard + ["--variant", "baseline", "--data", phantoms, "--out", str(run),
                                    "--kimg", "0.008", "--metrics", "fid,kid",
                                    "--metric-samples", "16"]) == 0
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("loss/G", "loss/D", "loss/r1", "loss/pl", "scores/real", "scores/fake", "augment/p",
                "progress/kimg", "timing/sec_per_kimg", "resources/peak_memory_gb", "metrics/fid",
                "metrics/kid_mean"):
        assert tag in scalars, (tag, sorted(scalars))
    assert [e.step for e in events.Scalars("progress/kimg")] == [4, 8]
    assert [e.step for e in events.Scalars("metrics/fid")] == [8]          # at the (final) snapshot
    images = set(events.Tags()["images"])
    assert {f"samples/{m}" for m in PHANTOM_MODALITIES} | {"samples/mask"} <= images
    assert (run / "samples-000000008.png").is_file() and (run / "reals-latest.png").is_file()
    floor = json.loads((run / "metrics_floor.json").read_text())     # real train vs held-out real
    assert {"fid", "kid_mean"} <= set(floor) and floor["num_test_slices"] > 0


def test_sample_grids_show_the_mask_as_a_colour_overlay():
    from training.monitor import sample_grids

    images = torch.linspace(-1, 1, 2 * 2 * 16 * 16).reshape(2, 2, 16, 16).numpy()
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, 4:8, 4:8] = 1
    labels[:, 10:14, 10:14] = 2
    grids = sample_grids(images, labels.numpy(), ["T1", "T2"], columns=2)
    assert list(grids) == ["T1", "T2", "mask"]
    factor = 96 // 16                                   # tiles are enlarged to >= 96 px
    tile = grids["T1"][2:2 + 16 * factor, 2:2 + 16 * factor].astype(int)
    background, structure = tile[0, 0], tile[5 * factor, 5 * factor]
    assert background[0] == background[1] == background[2]          # image alone: grey
    assert len(set(structure.tolist())) > 1                          # label 1: tinted
    mask = grids["mask"][2:2 + 16 * factor, 2:2 + 16 * factor]
    assert not mask[0, 0].any()                                      # background stays black
    assert tuple(mask[5 * factor, 5 * factor]) != tuple(mask[11 * factor, 11 * factor])  # one colour per label


def test_a_second_training_into_the_same_out_is_refused_while_the_first_runs(capsys, tmp_path, phantoms):
    from training.sampling.synthetic_dataset import exclusive_output

    run = tmp_path / "run"
    with exclusive_output(run, "training"):  # as the first training holds it
        assert main(TINY_GAN_ARGS + ["--variant", "mask", "--data", phantoms, "--out", str(run), "--kimg", "0.004",
                            "--no-tensorboard"]) == 2
    assert "another training is writing into it" in capsys.readouterr().err
    assert not list(run.iterdir())
    assert main(TINY_GAN_ARGS + ["--variant", "mask", "--data", phantoms, "--out", str(run), "--kimg", "0.004",
                        "--no-tensorboard"]) == 0  # free again


def test_resume_cleans_debris_refuses_negative_counters_and_logs_each_tick_once(tmp_path, phantoms, capsys):
    run = tmp_path / "run"
    base = TINY_GAN_ARGS + ["--variant", "mask", "--data", phantoms, "--no-tensorboard"]
    assert main(base + ["--out", str(run), "--kimg", "0.008"]) == 0
    snapshot = ckpt.latest_good_snapshot(run)
    # a kill -9 after this snapshot: a later tick logged, a snapshot write left half done
    with open(run / "stats.jsonl", "a") as handle:
        handle.write(json.dumps({"kimg": 0.012, "loss/G": 1.0}) + "\n")
    (run / ".snapshot-000000012.tmp-abc").mkdir()
    (run / ".snapshot-000000012.tmp-abc" / "G.safetensors").write_bytes(b"half")
    (run / "notes.txt").write_text("mine")
    assert main(["--resume", str(run), "--kimg", "0.016", "--no-tensorboard", "--threads", "1"]) == 0
    assert not list(run.glob(".snapshot-*")) and (run / "notes.txt").is_file()
    kimgs = [json.loads(line)["kimg"] for line in (run / "stats.jsonl").read_text().splitlines()]
    assert kimgs == sorted(set(kimgs))  # no tick twice
    forged = tmp_path / "forged"
    shutil.copytree(run, forged)
    latest = ckpt.latest_good_snapshot(forged)
    progress = json.loads((latest / "progress.json").read_text())
    progress["nimg"] = -5
    (latest / "progress.json").write_text(json.dumps(progress))
    manifest = json.loads((latest / "manifest.json").read_text())
    manifest["files"]["progress.json"] = ckpt.sha256_of(latest / "progress.json")
    (latest / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["--resume", str(forged), "--kimg", "0.024", "--no-tensorboard"]) == 2
    assert "progress.json holds [-5" in capsys.readouterr().err
    assert snapshot.path.is_dir()


def test_absurd_sizes_in_a_config_are_refused_before_any_allocation(capsys, tmp_path, phantoms):
    base = ["--cfg", "tiny", "--resolution", "16", "--variant", "mask", "--data", phantoms, "--out",
            str(tmp_path / "r"), "--dry-run"]
    for override, message in (("network.mapping_layers=10000000", "mapping_layers = 10000000 exceeds"),
                              ("network.z_dim=2147483648", "z_dim = 2147483648 exceeds"),
                              ("batch=1099511627776", "batch (1099511627776), metric_samples (256) or resolution "
                                                      "(16) above the largest supported")):
        with pytest.raises(SystemExit):
            main(base + ["--set", override])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    from training.data.cli import main as data_main
    assert data_main(["cache", phantoms, "--resolution", "65536"]) == 1
    assert "resolution must lie in 4..4096" in capsys.readouterr().err


def test_a_training_in_a_log_file_writes_a_line_per_tick(tmp_path, phantoms, capsys):
    assert main(TINY_GAN_ARGS + ["--variant", "mask", "--data", phantoms, "--out", str(tmp_path / "run"),
                        "--kimg", "0.008"]) == 0  # pytest's stderr is not a terminal
    ticks = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tick: ")]
    assert len(ticks) >= 2 and ticks[-1].startswith("tick: 0.008/0.008 kimg, ")
    assert "sec_per_kimg" in ticks[-1] and "ETA 0.0 min" in ticks[-1]


def test_a_signal_after_a_step_has_updated_drops_the_step_and_keeps_the_last_snapshot(tmp_path, phantoms,
                                                                                       monkeypatch, capsys):
    from training.loop import GanTrainer

    original = GanTrainer.sync_and_step

    def update_then_signal(self, network):
        original(self, network)
        if self.progress.batch_idx == 3 and network == "G":
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(GanTrainer, "sync_and_step", update_then_signal)
    run = tmp_path / "run"
    assert main(TINY_GAN_ARGS + ["--variant", "mask", "--data", phantoms, "--out", str(run), "--kimg", "1",
                        "--snap", "1"]) == 130
    err = capsys.readouterr().err
    assert "SIGINT: stopping at the next micro-batch" in err
    assert "the step in progress was dropped" in err and "snapshot-000000012" in err
    _, content = _weights(run)
    assert content.documents["progress"]["nimg"] == 12        # the end of step 3, not the half of step 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_signal_stops_at_once(tmp_path, phantoms):
    from training.cli_train import build_config, build_parser
    from training.loop import GanTrainer
    from training.training_data import open_training_data

    cfg = build_config(build_parser().parse_args(TINY_GAN_ARGS + ["--variant", "mask", "--data", phantoms]), 1)
    trainer = GanTrainer(cfg, tmp_path / "run", open_training_data(cfg), tensorboard=False)
    previous = trainer._install_signal_handlers()
    try:
        signal.raise_signal(signal.SIGINT)
        assert trainer.stop_requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_sigint_inside_a_long_step_stops_within_seconds(tmp_path, phantoms):
    import os
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    # one step = 1024 images in micro-batches of 4: many seconds; the signal arrives inside the first one
    argv = [sys.executable, "train_gan.py", *TINY_GAN_ARGS, "--variant", "mask", "--data", phantoms, "--out", str(run),
            "--batch", "1024", "--batch-gpu", "4", "--kimg", "10"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen(argv, cwd=root, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "samples-latest.png").exists() and time.time() < deadline:   # the last write before step 1
        time.sleep(0.1)
    assert process.poll() is None, process.stderr.read()
    sent = time.time()
    process.send_signal(signal.SIGINT)
    status = process.wait(timeout=60)
    took = time.time() - sent
    err = process.stderr.read()
    assert status == 130, err
    assert took < 5.0, f"{took:.1f} s from SIGINT to exit"
    assert "stopped" in err and "Traceback" not in err


def test_a_broken_patient_is_named_with_the_flag_that_leaves_it_out(tmp_path, capsys):
    from training.data import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", n_patients=3, shape=(32, 32, 8), seed=4, layout="nnunet")
    (data / "labelsTr" / "phantom_001.nii.gz").write_bytes(b"not a nifti file")
    argv = TINY_GAN_ARGS + ["--variant", "mask", "--data", str(data), "--out", str(tmp_path / "run"), "--kimg", "0.004"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "phantom_001" in err and "train_gan.py leave them out with --on-error skip" in err
    with pytest.warns(UserWarning, match="phantom_001"):
        assert main(argv + ["--on-error", "skip"]) == 0
    _, content = _weights(tmp_path / "run")
    assert content.documents["dataset"]["case_ids"] == ["phantom_000", "phantom_002"]


def test_bf16_autocast_trains_close_to_fp32_and_keeps_fp32_state(tmp_path, phantoms):
    runs = {}
    for precision in ("fp32", "bf16"):
        assert main(TINY_GAN_ARGS + ["--variant", "baseline", "--data", phantoms, "--out", str(tmp_path / precision),
                            "--kimg", "0.008", "--precision", precision]) == 0
        runs[precision] = _weights(tmp_path / precision)[1]
    assert runs["bf16"].documents["config"]["precision"] == "bf16"
    for name, weight in runs["bf16"].tensors["G"].items():
        assert weight.dtype == runs["fp32"].tensors["G"][name].dtype      # weights, w_avg and Adam stay fp32
    w_avg = {p: runs[p].tensors["G"]["mapping.w_avg"] for p in runs}
    difference = (w_avg["bf16"] - w_avg["fp32"]).abs().max() / w_avg["fp32"].abs().max()
    assert 0 < difference < 0.05                                           # bf16 rounding, not another training


def test_preprocess_ct_trains_on_the_windowed_cache_that_stylepair_data_built(tmp_path, capsys, monkeypatch):
    import json as json_module

    from training.data import write_phantom_dataset
    from training.data import cache as cache_module
    from training.data.cli import main as data_main

    data = write_phantom_dataset(tmp_path / "ct", n_patients=3, shape=(32, 32, 8), seed=6, layout="nnunet")
    meta = json_module.loads((data / "dataset.json").read_text())
    meta["channel_names"]["0"] = "CT"                   # the first channel is CT: the preset's HU window applies
    (data / "dataset.json").write_text(json_module.dumps(meta))
    assert data_main(["cache", str(data), "--config", "ct", "--resolution", "16"]) == 0
    built = capsys.readouterr().out.split("cache       ")[1].split()[0]
    builds = []
    original = cache_module.build_slice_cache
    monkeypatch.setattr(cache_module, "build_slice_cache", lambda *a, **k: builds.append(a) or original(*a, **k))
    run = tmp_path / "run"
    argv = TINY_GAN_ARGS + ["--variant", "mask", "--data", str(data), "--out", str(run), "--kimg", "0.004",
                   "--preprocess", "ct", "--drop-end-slices", "0"]
    assert main(argv) == 0
    assert not builds                                   # the cache stylepair-data built, opened as it is
    _, content = _weights(run)
    assert content.documents["config"]["preprocess"] == "ct" and content.documents["config"]["resolution"] == 16
    windows = {e["modality"]: (e["lo"], e["hi"]) for e in content.documents["dataset"]["intensity"]}
    assert windows["CT"] == (-1000.0, 2000.0) and windows["T2"] == (0.0, 1900.0)   # configs/data/ct.yaml's windows
    assert built.startswith(str(data))
    without = tmp_path / "default"       # without the preset: T2 is an MR percentile window, another cache
    assert main(TINY_GAN_ARGS + ["--variant", "mask", "--data", str(data), "--out", str(without), "--kimg", "0.004"]) == 0
    default = {e["modality"]: (e["lo"], e["hi"]) for e in _weights(without)[1].documents["dataset"]["intensity"]}
    assert default["T2"] != (0.0, 1900.0) and len(builds) == 1


def test_a_resume_hashes_each_snapshot_file_once_and_sampling_only_what_it_reads(tmp_path, phantoms, monkeypatch):
    from collections import Counter

    from training.checkpoint import load_generator

    run = tmp_path / "run"
    assert main(TINY_GAN_ARGS + ["--variant", "mask", "--data", phantoms, "--out", str(run), "--kimg", "0.004"]) == 0
    snapshot = ckpt.latest_good_snapshot(run).path
    hashed = Counter()
    original = ckpt.sha256_of
    monkeypatch.setattr(ckpt, "sha256_of", lambda path: hashed.update([path]) or original(path))
    assert main(["--resume", str(run), "--kimg", "0.008", "--no-tensorboard", "--threads", "1"]) == 0
    resumed_files = {path.name: n for path, n in hashed.items() if path.parent == snapshot}
    assert set(resumed_files) == set(ckpt.read_json(snapshot / "manifest.json")["files"])
    assert set(resumed_files.values()) == {1}            # every file of the resumed snapshot, hashed once
    newest = ckpt.latest_good_snapshot(run).path
    hashed.clear()
    load_generator(run)
    read = {path.name for path in hashed if path.parent == newest}
    assert read == {"G_ema.safetensors", "config.json", "dataset.json", "progress.json", "metrics.json"}
