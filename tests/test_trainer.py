"""Trainer: the paper's recipe (warm-up, clipping, Adam, EMA), presets, data order, safety checks."""

import json

import pytest
import torch

from ddpm.config import apply_overrides
from ddpm.data import ImageDataset
from ddpm.errors import CheckpointError, ConfigError, DataError
from ddpm.presets import PRESETS, get_preset
from ddpm.train.ema import EMA
from ddpm.train.metrics import read_metrics
from ddpm.train.trainer import NonFiniteError, Trainer, warmup_lr


def tiny_dataset(n=12, labels=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 10 if labels else torch.full((n,), -1)
    return ImageDataset(images, y, num_classes=10 if labels else None)


def tiny_config(*overrides):
    return apply_overrides(get_preset("digits-tiny"), ["train.batch_size=4", "train.ckpt_every=0", *overrides])


# ----------------------------------------------------------------------------- presets


def test_cifar10_preset_is_the_paper_recipe():
    c = get_preset("cifar10")
    t = c.train
    assert (t.lr, t.adam_eps, tuple(t.adam_betas), t.warmup, t.grad_clip) == (2e-4, 1e-8, (0.9, 0.999), 5000, 1.0)
    assert (t.batch_size, t.ema_decay, t.random_flip, t.steps, t.timestep_sampler) == (128, 0.9999, True, 800_000, "uniform")
    assert c.model.dropout == 0.1 and c.model.ch == 128 and tuple(c.model.ch_mult) == (1, 2, 2, 2)
    assert (c.diffusion.mean_type, c.diffusion.var_type, c.diffusion.loss_type) == ("eps", "fixedlarge", "mse")
    assert (c.diffusion.beta_start, c.diffusion.beta_end, c.diffusion.num_timesteps) == (1e-4, 0.02, 1000)


@pytest.mark.parametrize("name,steps,flip,ch", [
    ("celebahq256", 500_000, True, 128), ("lsun-church", 1_200_000, True, 128),
    ("lsun-bedroom", 2_400_000, False, 128), ("lsun-cat", 1_800_000, True, 128),
    ("lsun-bedroom-large", 1_150_000, False, 192)])
def test_256_presets(name, steps, flip, ch):
    c = get_preset(name)
    assert (c.train.lr, c.train.batch_size, c.train.ema_decay, c.train.warmup) == (2e-5, 64, 0.9999, 5000)
    assert (c.train.steps, c.train.random_flip, c.model.ch, c.model.dropout) == (steps, flip, ch, 0.0)
    assert tuple(c.model.ch_mult) == (1, 1, 2, 2, 4, 4) and c.model.resolution == 256
    assert c.diffusion.var_type == "fixedsmall"  # the 256 models sample with beta-tilde


def test_presets_are_fresh_and_unknown_is_an_error():
    a = get_preset("digits")
    a.train.lr = 123.0
    assert get_preset("digits").train.lr != 123.0
    assert {"cifar10", "digits", "digits-tiny", "lsun-church"} <= set(PRESETS)
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("cifar100")


# ----------------------------------------------------------------------------- recipe pieces


def test_warmup_lr():
    assert warmup_lr(2e-4, 5000, 1) == pytest.approx(2e-4 / 5000)
    assert warmup_lr(2e-4, 5000, 2500) == pytest.approx(1e-4)
    assert warmup_lr(2e-4, 5000, 5000) == 2e-4
    assert warmup_lr(2e-4, 5000, 10**6) == 2e-4
    assert warmup_lr(2e-4, 0, 1) == 2e-4


def test_ema_first_update_copies_then_decays():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, 0.9)
    with torch.no_grad():
        for p in ema.model.parameters():
            p.fill_(100.0)  # anything: the first update must overwrite it
    ema.update(net)
    for a, b in zip(ema.model.parameters(), net.parameters()):
        assert torch.equal(a, b)
    before = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for e, b0, p in zip(ema.model.parameters(), before, net.parameters()):
        torch.testing.assert_close(e, 0.9 * b0 + 0.1 * p, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_one_step_matches_a_hand_written_update(tmp_path):
    """Batch from the seeded streams, L_simple, clip to 1.0, Adam with the warmed-up lr, EMA copy."""
    cfg = tiny_config("train.lr=0.01", "train.warmup=4", "train.grad_clip=0.5")
    tr = Trainer(cfg, tmp_path / "run", dataset=tiny_dataset(), progress=False, tensorboard=False)
    ref = [p.detach().clone() for p in tr.model.parameters()]
    import copy

    model = copy.deepcopy(tr.model)
    g_cpu = torch.Generator().manual_seed(cfg.train.seed)
    g_dev = torch.Generator().manual_seed(cfg.train.seed + 1)
    idx = tr._global_indices(0)
    t = torch.randint(0, cfg.diffusion.num_timesteps, (4,), generator=g_cpu)
    flip = torch.rand(4, generator=g_cpu) < 0.5
    noise = torch.randn((4, 1, 28, 28), generator=g_dev)
    x = tr.dataset.images[idx].float() / 127.5 - 1
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    a = torch.tensor(tr.diffusion.alphas_cumprod, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x + (1 - a).sqrt() * noise
    loss = ((model(x_t, t) - noise) ** 2).mean()
    loss.backward()
    loss = loss.detach()
    grads = [p.grad for p in model.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = min(1.0, 0.5 / (float(norm) + 1e-6))
    lr = 0.01 * 1 / 4
    expected = []
    for p0, g in zip(ref, grads):
        g = g * scale
        m, v = 0.1 * g, 0.001 * g * g
        m_hat, v_hat = m / 0.1, v / 0.001
        expected.append(p0 - lr * m_hat / (v_hat.sqrt() + 1e-8))
    got = tr.train_step()
    assert float(got) == pytest.approx(float(loss), rel=1e-5)
    assert tr.step == 1 and tr._last_lr == pytest.approx(lr)
    for p, e in zip(tr.model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-4, atol=1e-6)
    for p, e in zip(tr.ema.model.parameters(), tr.model.parameters()):
        assert torch.equal(p, e)  # first EMA update = copy


def test_data_order_is_an_epoch_permutation(tmp_path):
    tr = Trainer(tiny_config(), tmp_path / "run", dataset=tiny_dataset(n=10), progress=False, tensorboard=False)
    stream = torch.cat([tr._global_indices(s) for s in range(5)])  # 20 positions = 2 epochs of 10
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))
    assert stream[:10].tolist() != stream[10:].tolist()
    assert torch.equal(tr._global_indices(3), stream[12:16])  # a pure function of the step


def test_class_labels_and_label_dropout(tmp_path):
    cfg = tiny_config("data.class_labels=true", "train.class_dropout=0.5",
                      "train.batch_size=12")
    ds = tiny_dataset(n=12, labels=True)
    tr = Trainer(cfg, tmp_path / "run", dataset=ds, progress=False, tensorboard=False)
    idx = tr._global_indices(0)
    _, _, _, _, kwargs = tr._batch()
    y = kwargs["y"]
    kept = y != 10
    assert 0 < int(kept.sum()) < 12  # some replaced by the null label, some kept
    assert torch.equal(y[kept], ds.labels[idx][kept])


def test_metrics_log_and_sample_grid_leave_rng_untouched(tmp_path):
    ds = tiny_dataset()
    a = Trainer(tiny_config("train.sample_every=1", "train.num_sample_images=2", "train.sample_steps=2"),
                tmp_path / "a", dataset=ds, progress=False, tensorboard=False)
    a.train(steps=2)
    b = Trainer(tiny_config(), tmp_path / "b", dataset=ds, progress=False, tensorboard=False)
    b.train(steps=2)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert (tmp_path / "a" / "samples" / "step_0000002.png").is_file()
    recs = read_metrics(tmp_path / "a")
    assert [r["step"] for r in recs] == [1, 2]
    assert set(recs[0]) >= {"step", "loss", "grad_norm", "lr", "images_per_sec"}
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["sample_every"] == 1


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config("train.ckpt_every=2", "train.log_every=1")
    tr = Trainer(cfg, tmp_path / "run", dataset=tiny_dataset(), progress=False, tensorboard=False)
    real = tr.diffusion.training_losses

    def poisoned(*a, **k):
        out = real(*a, **k)
        if tr.step == 2:  # the third update goes bad
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(tr.diffusion, "training_losses", poisoned)
    with pytest.raises(NonFiniteError, match="step 3"):
        tr.train(steps=6)
    from ddpm.checkpoint import latest_checkpoint, load_checkpoint

    assert latest_checkpoint(tmp_path / "run").name == "step_0000002"
    loaded = load_checkpoint(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())


def test_refuses_existing_run_dir_and_bad_data(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="--resume"):
        Trainer(tiny_config(), tmp_path / "run", dataset=tiny_dataset(), progress=False)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    rgb = ImageDataset(torch.zeros((4, 3, 28, 28), dtype=torch.uint8), torch.full((4,), -1))
    with pytest.raises(DataError, match="3x28x28"):
        Trainer(tiny_config(), tmp_path / "other", dataset=rgb, progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        Trainer(tiny_config("train.batch_size=0"), tmp_path / "third", dataset=tiny_dataset(), progress=False)


def _decode(images, path):
    return images[int(path)]


def test_lazy_dataset_through_dataloader_matches_in_memory(tmp_path):
    import functools

    mem = tiny_dataset(n=10)
    lazy = ImageDataset(None, mem.labels, paths=[str(i) for i in range(10)],
                        loader=functools.partial(_decode, mem.images), shape=(1, 28, 28))
    a = Trainer(tiny_config(), tmp_path / "a", dataset=mem, progress=False, tensorboard=False)
    b = Trainer(tiny_config(), tmp_path / "b", dataset=lazy, progress=False, tensorboard=False)
    b.num_workers = 0  # the DataLoader path in-process; workers only add speed
    a.train(steps=3)
    b.train(steps=3)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


def test_bf16_autocast_step_keeps_fp32_master_weights(tmp_path):
    tr = Trainer(tiny_config("train.precision=bf16"), tmp_path / "run", dataset=tiny_dataset(), progress=False,
                 tensorboard=False)
    before = [p.detach().clone() for p in tr.model.parameters()]
    loss = tr.train_step()
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


def test_auto_precision_is_resolved_for_the_device_and_saved(tmp_path):
    """`auto` (the default) is fp32 on a CPU; the run's config records the resolved value, so a
    resume on another machine trains in the same precision. The caller's config is not mutated."""
    cfg = tiny_config()
    assert cfg.train.precision == "auto"
    tr = Trainer(cfg, tmp_path / "run", dataset=tiny_dataset(), progress=False, tensorboard=False)
    assert tr.config.train.precision == "fp32" and cfg.train.precision == "auto"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["precision"] == "fp32"
    with pytest.raises(ConfigError, match="train.precision must be auto, fp32, bf16 or fp16"):
        Trainer(tiny_config("train.precision=fp8"), tmp_path / "bad", dataset=tiny_dataset(), progress=False,
                tensorboard=False)
    with pytest.raises(ConfigError, match="fp16 .* needs a CUDA GPU"):  # the loss-scaled fp16 path is CUDA-only
        Trainer(tiny_config("train.precision=fp16"), tmp_path / "bad16", dataset=tiny_dataset(), progress=False,
                tensorboard=False)
