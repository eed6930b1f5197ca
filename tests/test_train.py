"""Training: the three trainers from the command line, bit-exact resume, errors, crash safety."""
from __future__ import annotations

import errno
import json
import math

import numpy as np
import pytest
import torch

from adm.cli.main import main
from adm.errors import CheckpointError, ConfigError, DataError
from adm.nn import ADM, ADM_U, ADM_classifier
from adm.train import TensorData, TrainConfig, TrainingDiverged, train
from adm.train import state as ckpt
from adm.nn.config import config_to_dict as model_config_to_dict
from adm.train.config import apply_overrides
from adm.train.data import BatchOrder
from adm.train.loop import lr_at

TINY = ["--image-size", "8", "--set", "model_channels=32", "--set", "channel_mult=1,2", "--set", "num_res_blocks=1",
        "--set", "attention_resolutions=4", "--set", "num_head_channels=32", "--set", "steps=50"]
RUN = ["--batch-size", "8", "--log-every", "2", "--sample-steps", "2", "--no-progress", "--device", "cpu"]




def make_npz(path, n=32, size=8, classes=3, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, size, size, channels)) * 255).astype(np.uint8)
    y = np.arange(n) % classes
    np.savez(path, x, y)
    return path


@pytest.fixture
def npz(tmp_path):
    return str(make_npz(tmp_path / "data.npz"))


def tiny_config(**kw) -> TrainConfig:
    """A TrainConfig of a tiny class-conditional ADM (8x8 grey, 3 classes + null label)."""
    from adm.nn.config import ADMConfig
    from adm.diffusion.config import DiffusionConfig

    model = ADMConfig(image_size=8, in_channels=1, model_channels=32, num_res_blocks=1, attention_resolutions=(4,),
                      channel_mult=(1, 2), num_head_channels=32, num_classes=3, null_class=True, dropout=0.1,
                      diffusion=DiffusionConfig(steps=50, noise_schedule="cosine", learn_sigma=True,
                                                rescale_learned_sigmas=True))
    base = dict(model=model_config_to_dict(model), data="tensors", batch_size=8, microbatch=4, max_steps=6,
                save_every=3, log_every=2, sample_every=0, label_dropout=0.2, ema=(0.99, 0.9), seed=3)
    base.update(kw)
    return TrainConfig(**base)


def tensor_data(n=32, size=8, classes=3, seed=0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    return TensorData(images, torch.arange(n) % classes, classes)


def last_checkpoint(run) -> dict:
    return ckpt.load_checkpoint(ckpt.list_checkpoints(run)[-1][1])


# -- the three trainers from the command line ------------------------------------------------------
def test_train_cli_writes_a_run_and_resumes(tmp_path, npz):
    out = tmp_path / "run"
    args = ["train", "--data", npz, "--out", str(out), *TINY, *RUN, "--max-steps", "4", "--save-every", "2",
            "--label-dropout", "0.1", "--ema", "0.999,0.99", "--microbatch", "4"]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["trainer"] == "diffusion" and cfg["model"]["num_classes"] == 3 and cfg["model"]["in_channels"] == 1
    assert cfg["ema"] == [0.999, 0.99]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]
    assert all(math.isfinite(m["loss"]) and "mse" in m and "vb" in m for m in metrics)
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [4]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    model = ADM.from_pretrained(out / "model")
    ema = ADM.from_pretrained(out / "ema_0.99")
    state = last_checkpoint(out)
    for k, v in ema.state_dict().items():
        assert torch.equal(v, state["ema"]["0.99"][k])
    assert model.config.num_classes == 3 and model.null_label == 3
    # The same command again, with a later --max-steps: resumes at step 4.
    assert main(args[:-8] + ["--max-steps", "6", "--save-every", "2", "--label-dropout", "0.1", "--ema", "0.999,0.99"]) == 0
    assert last_checkpoint(out)["step"] == 6
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6]


def test_train_classifier_cli_reports_accuracy_by_quarter(tmp_path, npz):
    out = tmp_path / "clf"
    args = ["train-classifier", "--data", npz, "--out", str(out), *TINY, *RUN, "--max-steps", "2", "--save-every", "2"]
    assert main(args) == 0
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= m["acc"] <= 1.0 and any(k.startswith("acc_q") for k in m)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lr"] == 3e-4 and cfg["ema"] == []
    clf = ADM_classifier.from_pretrained(out / "model")
    assert clf.config.num_classes == 3
    assert not (out / "samples").exists()


def test_train_upsampler_cli(tmp_path, npz):
    out = tmp_path / "up"
    args = ["train-upsampler", "--data", npz, "--out", str(out), *TINY, *RUN, "--small-size", "4",
            "--max-steps", "2", "--save-every", "2"]
    assert main(args) == 0
    up = ADM_U.from_pretrained(out / "model")
    assert up.config.small_size == 4 and up.config.image_size == 8
    assert (out / "samples" / "step_00000002.png").is_file()


# -- resume equals straight training ---------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["uniform", "loss-second-moment"])
def test_resume_is_bit_exact(tmp_path, sampler):
    data = tensor_data()
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(timestep_sampler=sampler), straight, device="cpu", progress=False, data=data)
    train(tiny_config(max_steps=3, timestep_sampler=sampler), split, device="cpu", progress=False, data=data)
    assert last_checkpoint(split)["step"] == 3
    train(tiny_config(timestep_sampler=sampler), split, device="cpu", progress=False, data=data)
    a, b = last_checkpoint(straight), last_checkpoint(split)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for rate in a["ema"]:
        for k in a["ema"][rate]:
            assert torch.equal(a["ema"][rate][k], b["ema"][rate][k])
    for i, st in a["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg_sq"], b["optimizer"]["state"][i]["exp_avg_sq"])


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_and_gradient_checkpointing(tmp_path, dtype):
    run = tmp_path / "run"
    cfg = tiny_config(max_steps=2, save_every=2, log_every=1, dtype=dtype, grad_checkpoint=True, grad_clip=1.0,
                      warmup=2, anneal="cosine")
    train(cfg, run, device="cpu", progress=False, data=tensor_data())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    state = last_checkpoint(run)
    assert all(torch.isfinite(v).all() and v.dtype == torch.float32 for v in state["model"].values())
    assert bool(state["scaler"]) == (dtype == "fp16")
    assert ADM.from_pretrained(run / "model").config.use_checkpoint is False  # a training-only setting


def test_resume_keeps_checkpoints_at_keep_every(tmp_path):
    data = tensor_data()
    run = tmp_path / "run"
    train(tiny_config(max_steps=6, save_every=1, keep_every=2, ema=()), run, device="cpu", progress=False, data=data)
    names = [p.name for _, p in ckpt.list_checkpoints(run)]
    assert names == ["step_00000002.keep.pt", "step_00000004.keep.pt", "step_00000006.keep.pt"]


def test_batch_order_is_a_function_of_seed_and_step():
    a, b = BatchOrder(10, 3, seed=1), BatchOrder(10, 3, seed=1)
    steps = [a.indices(s).tolist() for s in range(6)]
    assert [b.indices(s).tolist() for s in reversed(range(6))] == steps[::-1]
    assert sorted(sum(steps[:3], [])) == sorted(set(sum(steps[:3], [])))  # an epoch has no repeats
    assert a.position(4) == {"epoch": 1, "batch": 1}


def test_lr_warmup_and_anneal():
    cfg = tiny_config(lr=1.0, warmup=10, anneal="linear", anneal_steps=110, max_steps=200)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 60) == pytest.approx(0.5) and lr_at(cfg, 150) == 0.0
    assert lr_at(tiny_config(lr=2.0), 1000) == 2.0


# -- bad input ---------------------------------------------------------------------------------------
def test_missing_and_empty_data_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *RUN]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r2"), *RUN]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adm train: error:") and len(err.splitlines()) == 1


def test_more_classes_in_data_than_in_model(tmp_path, capsys):
    data = make_npz(tmp_path / "d5.npz", classes=5)
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "r"), *TINY, "--set", "num_classes=3", *RUN,
               "--max-steps", "1"])
    assert rc == 2
    assert "5 classes but the model has 3" in capsys.readouterr().err
    with pytest.raises(DataError):
        train(tiny_config(), tmp_path / "r2", device="cpu", progress=False, data=tensor_data(classes=5))


def test_label_dropout_needs_a_null_label(tmp_path):
    cfg = tiny_config()
    model = dict(cfg.model, null_class=False)
    with pytest.raises(ConfigError, match="null label"):
        train(cfg.replace(model=model), tmp_path / "r", device="cpu", progress=False, data=tensor_data())


def test_resume_with_other_settings_names_the_fields(tmp_path, npz, capsys):
    out = str(tmp_path / "run")
    base = ["train", "--data", npz, "--out", out, *TINY, *RUN, "--max-steps", "1", "--save-every", "1"]
    assert main(base) == 0
    assert main(base + ["--set", "model_channels=64", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "model_channels: 32 -> 64" in err and "seed: 0 -> 5" in err and "--force" in err
    assert main(base + ["--set", "model_channels=64", "--force"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["model_channels"] == 64


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    data, run = tensor_data(), tmp_path / "run"
    train(tiny_config(max_steps=3), run, device="cpu", progress=False, data=data)

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_dump", full_disk)
    with pytest.raises(CheckpointError, match="disk is full.*step 3.*intact"):
        train(tiny_config(), run, device="cpu", progress=False, data=data)
    monkeypatch.undo()
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [3]
    assert not list((run / "checkpoints").glob(".*"))  # no temporary file left behind
    assert last_checkpoint(run)["step"] == 3


def test_non_finite_steps_are_skipped_then_abort(tmp_path, monkeypatch, capsys):
    from adm.train import objectives

    data, run = tensor_data(), tmp_path / "run"
    real = objectives.DiffusionObjective.loss

    def nan_loss(self, *a, **kw):
        loss, stats = real(self, *a, **kw)
        return loss * float("nan"), stats

    monkeypatch.setattr(objectives.DiffusionObjective, "loss", nan_loss)
    cfg = tiny_config(max_steps=4, save_every=100, log_every=2, max_nonfinite=5, ema=(0.9,))
    train(cfg, run, device="cpu", progress=False, data=data)  # 4 non-finite steps: reported at each log
    assert "skipped 2 step(s) with a non-finite" in capsys.readouterr().err
    state = last_checkpoint(run)
    torch.manual_seed(cfg.seed)
    fresh = ADM(cfg.model_config())
    for k, v in fresh.state_dict().items():  # every step was skipped: the weights are the initial ones
        assert torch.equal(v, state["model"][k]), k
    assert all(torch.isfinite(v).all() for v in state["ema"]["0.9"].values())
    with pytest.raises(TrainingDiverged, match="non-finite steps in a row"):
        train(cfg.replace(max_steps=10), run, device="cpu", progress=False, data=data)


def test_set_overrides_parse_types_and_reject_unknown_fields():
    from adm.nn.config import ADMConfig

    cfg = apply_overrides(ADMConfig(), {"channel_mult": "1,2,2,4", "dropout": "0.1", "null_class": "false",
                                        "num_classes": "10", "noise_schedule": "cosine", "diffusion.learn_sigma": "true"})
    assert cfg.channel_mult == (1, 2, 2, 4) and cfg.dropout == 0.1 and cfg.num_classes == 10
    assert cfg.diffusion.noise_schedule == "cosine" and cfg.diffusion.learn_sigma is True
    with pytest.raises(ConfigError, match="unknown config field"):
        apply_overrides(ADMConfig(), {"widht": "3"})
    with pytest.raises(ConfigError, match="not a valid"):
        apply_overrides(ADMConfig(), {"dropout": "lots"})


# -- --init-from: a new run that starts from given weights -----------------------------------------
def test_init_from_starts_model_and_every_ema_copy_from_the_weights(tmp_path, npz, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--data", npz, "--out", str(first), *TINY, *RUN, "--max-steps", "2", "--save-every", "2"]) == 0
    start = ADM.from_pretrained(first / "model").state_dict()
    # No --preset / --set: the weights' own config. A learning rate of ~0 keeps the weights where they start.
    def args(max_steps):
        return ["train", "--data", npz, "--out", str(second), *RUN, "--max-steps", str(max_steps), "--save-every", "1",
                "--init-from", str(first / "model"), "--lr", "1e-30", "--ema", "0.9999,0.9", "--seed", "5"]

    assert main(args(1)) == 0
    assert "starting" in capsys.readouterr().err
    state = last_checkpoint(second)
    saved = json.loads((second / "config.json").read_text())
    assert saved["init_from"] == str(first / "model") and saved["init_images_seen"] == 2 * 8  # run a: 2 steps of 8
    exported = json.loads((second / "model" / "config.json").read_text())["extra"]
    assert exported["images_seen"] == 2 * 8 + 1 * 8 and exported["init_from"] == str(first / "model")
    for k, v in start.items():
        torch.testing.assert_close(state["model"][k], v, rtol=0, atol=1e-6)
        for rate in ("0.9999", "0.9"):
            torch.testing.assert_close(state["ema"][rate][k], v, rtol=0, atol=1e-6)
    # A run of another seed without --init-from starts elsewhere.
    fresh = tmp_path / "c"
    assert main(["train", "--data", npz, "--out", str(fresh), *TINY, *RUN, "--max-steps", "1", "--seed", "5"]) == 0
    other = last_checkpoint(fresh)["model"]
    assert any(not torch.allclose(other[k], v) for k, v in start.items())
    # The same command again resumes the run from its checkpoint: --init-from no longer applies.
    assert main(args(2)) == 0
    assert "resuming" in capsys.readouterr().err and last_checkpoint(second)["step"] == 2


def test_init_from_other_network_or_kind_is_one_line_and_writes_nothing(tmp_path, npz, capsys):
    first = tmp_path / "a"
    assert main(["train", "--data", npz, "--out", str(first), *TINY, *RUN, "--max-steps", "1"]) == 0
    wider = ["--set", "model_channels=64"]  # TINY's is 32
    bad = tmp_path / "bad"
    assert main(["train", "--data", npz, "--out", str(bad), *TINY, *wider, *RUN, "--max-steps", "1",
                 "--init-from", str(first / "model")]) == 2
    err = capsys.readouterr().err
    assert "do not fit this run's network" in err and len(err.strip().splitlines()) == 1
    assert not bad.exists()
    assert main(["train-classifier", "--data", npz, "--out", str(bad), *RUN, "--max-steps", "1",
                 "--init-from", str(first / "model")]) == 2
    assert "expected ADM_classifier" in capsys.readouterr().err and not bad.exists()
    assert main(["train", "--data", npz, "--out", str(bad), *RUN, "--init-from", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err and not bad.exists()
