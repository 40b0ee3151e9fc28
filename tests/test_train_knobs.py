"""Training knobs (issue 18): a run from a config file, gradient accumulation, LR decay, weight decay,
fp16 with a loss scaler (CUDA), Apple mps — and which of them a resume refuses."""

import json
import math

import pytest
import torch

from ddpm import accel
from ddpm.cli import main
from ddpm.config import apply_overrides
from ddpm.errors import ConfigError
from ddpm.presets import get_preset
from ddpm.train.metrics import read_metrics
from ddpm.train.optim import learning_rate
from ddpm.train.trainer import Trainer
from ddpm.train.validate import validate_config

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")


def cfg(*more):
    return apply_overrides(get_preset("digits-tiny"), ["train.batch_size=8", "train.ckpt_every=0", *more])


def trainer(config, d, **kw):
    return Trainer(config, d, progress=False, tensorboard=False, **kw)


# ----------------------------------------------------------------------------- config file


def test_train_from_a_config_file_with_overrides(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["train", "--preset", "digits-tiny", "--run-dir", str(first), "--steps", "2", "--threads", "1",
                 "--no-progress", "--no-tensorboard", "--set", "train.batch_size=4", "--set", "train.lr=5e-4"]) == 0
    second = tmp_path / "second"
    assert main(["train", "--config", str(first / "config.json"), "--set", "train.seed=7", "--run-dir", str(second),
                 "--steps", "3", "--threads", "1", "--no-progress", "--no-tensorboard"]) == 0
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, second))
    assert b["train"]["seed"] == 7 and b["train"]["steps"] == 3 and b["train"]["lr"] == 5e-4
    a["train"].update(seed=7, steps=3)
    assert a == b  # everything else is the first run's
    assert [r["step"] for r in read_metrics(second)] == [1, 2, 3]
    capsys.readouterr()
    hand = tmp_path / "partial.json"  # sections may be left out: defaults fill them
    hand.write_text(json.dumps({"model": {"ch": 8, "ch_mult": [1], "attn_resolutions": [], "norm_groups": 8},
                                "data": {"source": "digits", "resolution": 28, "channels": 1},
                                "train": {"batch_size": 4, "steps": 1}}))
    assert main(["train", "--config", str(hand), "--run-dir", str(tmp_path / "h"), "--set", "diffusion.num_timesteps=10",
                 "--threads", "1", "--no-progress", "--no-tensorboard"]) == 0
    c = json.loads((tmp_path / "h" / "config.json").read_text())
    assert (c["model"]["ch"], c["diffusion"]["num_timesteps"], c["train"]["lr"]) == (8, 10, 2e-4)  # lr: default


@pytest.mark.parametrize("content,message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"train": {"bogus": 1}}', "is not a ddpm config .*bogus"),
    ('{"train": 5}', "is not a ddpm config"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, content, message):
    f = tmp_path / "c.json"
    f.write_text(content)
    assert main(["train", "--config", str(f), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    import re

    assert re.search(message, err[0]), err
    assert not (tmp_path / "r").exists()


def test_config_file_excludes_preset_and_resume(tmp_path, capsys):
    f = tmp_path / "c.json"
    f.write_text("{}")
    assert main(["train", "--config", str(f), "--preset", "digits", "--run-dir", str(tmp_path / "r")]) == 2
    assert "pass one of them" in capsys.readouterr().err
    assert main(["train", "--config", str(f), "--resume", "--run-dir", str(tmp_path / "r")]) == 2
    assert "--resume continues the run with its saved config" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.json"), "--run-dir", str(tmp_path / "r")]) == 2
    assert "cannot read it" in capsys.readouterr().err


# ----------------------------------------------------------------------------- gradient accumulation


@pytest.mark.parametrize("k", [2, 4])
def test_grad_accumulation_equals_the_big_batch(tmp_path, k):
    """One global batch of 8 in k micro-batches of 8/k: same loss, same gradient and same update as one
    pass, to float rounding (1e-6). Class-conditional with label drop-out and flips, so the labels and
    every per-example draw are split along."""
    over = ["data.class_labels=true", "train.class_dropout=0.3", "model.dropout=0.0"]
    big = trainer(cfg(*over), tmp_path / "big")
    acc = trainer(cfg(*over, f"train.grad_accum={k}"), tmp_path / f"acc{k}")
    before = [p.detach().clone() for p in big.model.parameters()]
    la, lb = big.train_step(), acc.train_step()
    assert abs(float(la) - float(lb)) <= 1e-6
    for (name, p), q in zip(big.model.named_parameters(), acc.model.parameters()):
        assert (p.grad - q.grad).abs().max().item() <= 1e-6, name
    # the update (after clipping and Adam) of every weight, as one vector as in tests/test_distributed.py
    ua = torch.cat([(p.detach() - b).flatten() for p, b in zip(big.model.parameters(), before)])
    ub = torch.cat([(q.detach() - b).flatten() for q, b in zip(acc.model.parameters(), before)])
    assert ((ua - ub).norm() / ua.norm()).item() <= 1e-6
    assert big.running.bucket_count.sum() == acc.running.bucket_count.sum() == 8
    torch.testing.assert_close(big.running.bucket_sum, acc.running.bucket_sum, rtol=1e-6, atol=1e-7)


def test_grad_accumulation_must_divide_the_batch():
    with pytest.raises(ConfigError, match="not divisible by train.grad_accum=3"):
        validate_config(cfg("train.grad_accum=3"))
    with pytest.raises(ConfigError, match="train.grad_accum must be >= 1"):
        validate_config(cfg("train.grad_accum=0"))


# ----------------------------------------------------------------------------- learning-rate schedule


def test_lr_schedules_at_given_steps():
    t = cfg("train.lr=1.0", "train.warmup=10", "train.steps=110", "train.lr_final_ratio=0.1").train
    assert [learning_rate(t, s) for s in (1, 5, 10, 60, 110, 200)] == pytest.approx([0.1, 0.5, 1, 1, 1, 1])
    t.lr_schedule = "cosine"
    # after warm-up: 0.1 + 0.9 * (1 + cos(pi p)) / 2 with p = (s - 10) / 100
    assert learning_rate(t, 5) == pytest.approx(0.5)
    assert learning_rate(t, 10) == pytest.approx(1.0)
    assert learning_rate(t, 35) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))  # 0.86820
    assert learning_rate(t, 60) == pytest.approx(0.55)
    assert learning_rate(t, 110) == pytest.approx(0.1)
    assert learning_rate(t, 500) == pytest.approx(0.1)  # past train.steps: the final rate
    t.lr_schedule = "linear"
    assert [learning_rate(t, s) for s in (10, 35, 60, 110, 500)] == pytest.approx([1.0, 0.775, 0.55, 0.1, 0.1])
    t.lr_final_ratio, t.warmup = 0.0, 0
    assert [learning_rate(t, s) for s in (0, 55, 110)] == pytest.approx([1.0, 0.5, 0.0])


def test_trainer_follows_the_schedule(tmp_path):
    c = cfg("train.lr_schedule=cosine", "train.warmup=2", "train.steps=6", "train.lr_final_ratio=0.2",
            "train.batch_size=2")
    t = trainer(c, tmp_path / "run")
    t.train()
    t.close()
    got = [(r["step"], r["lr"]) for r in read_metrics(tmp_path / "run")]
    assert got == [(s, pytest.approx(learning_rate(t.config.train, s))) for s in range(1, 7)]
    assert got[-1][1] == pytest.approx(0.2 * c.train.lr)
    with pytest.raises(ConfigError, match="train.lr_schedule must be one of constant, cosine, linear"):
        validate_config(cfg("train.lr_schedule=step"))
    with pytest.raises(ConfigError, match=r"train.lr_final_ratio must be in \[0, 1\]"):
        validate_config(cfg("train.lr_final_ratio=1.5"))


# ----------------------------------------------------------------------------- weight decay


def test_weight_decay_is_decoupled_adamw(tmp_path):
    """AdamW's update is Adam's plus -lr·wd·w (Loshchilov & Hutter 2019), on the same gradients."""
    plain = trainer(cfg(), tmp_path / "adam")
    wd = trainer(cfg("train.weight_decay=0.1"), tmp_path / "adamw")
    assert type(plain.optimizer) is torch.optim.Adam and type(wd.optimizer) is torch.optim.AdamW
    assert wd.optimizer.param_groups[0]["weight_decay"] == 0.1
    w0 = [p.detach().clone() for p in plain.model.parameters()]
    plain.train_step()
    wd.train_step()
    lr = plain._last_lr
    assert max((lr * 0.1 * w).abs().max().item() for w in w0) > 1e-5  # the decay is far above the tolerance
    for p, q, w in zip(plain.model.parameters(), wd.model.parameters(), w0):
        torch.testing.assert_close(q.detach(), p.detach() - lr * 0.1 * w, rtol=0, atol=3e-7)  # float32 rounding
    with pytest.raises(ConfigError, match="train.weight_decay must be a finite number >= 0"):
        validate_config(cfg("train.weight_decay=-0.1"))


# ----------------------------------------------------------------------------- what a resume refuses


def test_resume_refuses_knobs_that_change_the_trajectory(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--preset", "digits-tiny", "--run-dir", str(run), "--steps", "2", "--threads", "1",
            "--no-progress", "--no-tensorboard", "--set", "train.batch_size=4", "--set", "train.lr_schedule=cosine"]
    assert main(base) == 0
    capsys.readouterr()
    before = (run / "config.json").read_text()
    for setting in ("train.grad_accum=2", "train.lr_schedule=linear", "train.lr_final_ratio=0.5",
                    "train.weight_decay=0.01", "train.steps=10"):
        code = main(["train", "--resume", "--run-dir", str(run), "--set", setting, "--threads", "1", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, (setting, err)
        assert setting.split("=")[0] in err[0] and "trajectory" in err[0], err
        assert (run / "config.json").read_text() == before
    # logging, checkpoint cadence (steps and minutes) and the stopping step may change
    assert main(["train", "--resume", "--run-dir", str(run), "--steps", "3", "--set", "train.ckpt_minutes=5",
                 "--set", "train.log_every=2", "--threads", "1", "--no-progress", "--no-tensorboard"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["ckpt_minutes"] == 5.0


# ----------------------------------------------------------------------------- fp16 and devices


def test_fp16_is_refused_off_cuda_with_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs fp16")
    code = main(["train", "--preset", "digits-tiny", "--run-dir", str(tmp_path / "r"), "--precision", "fp16",
                 "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "fp16" in err[0] and "needs a CUDA GPU" in err[0]
    assert not (tmp_path / "r").exists()  # refused before the run directory is made


def _fp16_on_cpu(t):
    """The fp16 path's mechanics on a CPU (PyTorch's CPU autocast has float16 too), bypassing the refusal
    that protects users: the CUDA run of the same code is test_fp16_with_a_loss_scaler_on_cuda."""
    from ddpm.train.optim import LossScaler

    t.config.train.precision = "fp16"
    t.scaler = LossScaler("fp16", torch.device("cpu"))
    return t


def test_fp16_loss_scaler_mechanics_on_cpu(tmp_path):
    small = ("train.batch_size=2", "train.ckpt_every=2")  # float16 convolutions are slow on a CPU
    ref = trainer(cfg(*small), tmp_path / "fp32")
    ref.train(steps=2)
    t = _fp16_on_cpu(trainer(cfg(*small), tmp_path / "fp16"))
    t.train(steps=2)
    l32 = [r["loss"] for r in read_metrics(tmp_path / "fp32")]
    l16 = [r["loss"] for r in read_metrics(tmp_path / "fp16")]
    assert l16 == pytest.approx(l32, rel=1e-3) and l16 != l32  # float16 rounding, nothing more
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # fp32 master weights
    from ddpm import checkpoint as ckpt

    _, js = ckpt.load_train_state(ckpt.latest_checkpoint(tmp_path / "fp16"))
    assert js["grad_scaler"]["scale"] == 65536.0 and js["grad_scaler"]["_growth_tracker"] == 2
    # an overflowing step is skipped by the scaler (weights unchanged, scale halved), not a failed run
    real = t.objective.losses
    t.objective.losses = lambda *a: {"loss": real(*a)["loss"] * 1e30}
    before = [p.detach().clone() for p in t.model.parameters()]
    t.train_step()
    assert all(torch.equal(p, q) for p, q in zip(before, t.model.parameters()))
    assert t.scaler.scaler.get_scale() == 32768.0
    t._check_finite()  # no NonFiniteError


@cuda_only
def test_fp16_with_a_loss_scaler_on_cuda(tmp_path):
    """float16 autocast with GradScaler: fp32 master weights, finite losses close to fp32's, the scaler's
    state saved in the checkpoint and restored on resume."""
    runs = {}
    for precision in ("fp32", "fp16"):
        t = Trainer(cfg(f"train.precision={precision}", "train.ckpt_every=3"), tmp_path / precision, device="cuda",
                    progress=False, tensorboard=False)
        t.train(steps=6)
        t.close()
        runs[precision] = t
    t16 = runs["fp16"]
    assert all(p.dtype == torch.float32 for p in t16.model.parameters())
    assert t16.scaler.scaler is not None and t16.scaler.scaler.get_scale() > 0
    l32 = [r["loss"] for r in read_metrics(tmp_path / "fp32")]
    l16 = [r["loss"] for r in read_metrics(tmp_path / "fp16")]
    assert all(math.isfinite(x) for x in l16)
    assert l16 == pytest.approx(l32, rel=0.05)
    from ddpm import checkpoint as ckpt

    _, js = ckpt.load_train_state(ckpt.latest_checkpoint(tmp_path / "fp16"))
    assert js["grad_scaler"]["scale"] == t16.scaler.scaler.get_scale()
    r = Trainer(None, tmp_path / "fp16", resume=True, device="cuda", progress=False, tensorboard=False)
    assert r.scaler.scaler.get_scale() == js["grad_scaler"]["scale"]
    r.train(steps=8)
    r.close()


def test_mps_device_is_selectable_where_present(monkeypatch, capsys, tmp_path):
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        code = main(["train", "--preset", "digits-tiny", "--run-dir", str(tmp_path / "r"), "--device", "mps"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "--device mps: Apple's Metal (MPS) backend is not available" in err[0]
        assert not (tmp_path / "r").exists()
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert accel.resolve_device("mps") == torch.device("mps")
    with pytest.raises(ConfigError, match="must be cpu, cuda, cuda:N or mps"):
        accel.resolve_device("mps:1")
