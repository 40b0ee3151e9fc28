"""Timestep samplers: improved DDPM's loss-second-moment importance sampling (Nichol & Dhariwal 2021, §3.3)."""

import json

import numpy as np
import pytest
import torch

import ddpm.train.timesteps as resample
from ddpm.errors import ConfigError
from ddpm.train.timesteps import LossSecondMomentResampler, UniformSampler, create_timestep_sampler



def _fill(sampler, T, rounds, value=lambda t, r: float(t + 1) * (1 + 0.1 * r)):
    for r in range(rounds):
        t = torch.arange(T)
        sampler.update_with_losses(t, torch.tensor([value(i, r) for i in range(T)], dtype=torch.float64))


def test_registered_by_name():
    s = create_timestep_sampler("loss-second-moment", 7)
    assert isinstance(s, LossSecondMomentResampler)
    assert (s.history_per_term, s.uniform_prob) == (10, 0.001)
    with pytest.raises(ConfigError, match="loss-second-moment"):
        create_timestep_sampler("importance", 7)


def test_uniform_until_every_t_has_ten_losses():
    T = 6
    s = LossSecondMomentResampler(T)
    _fill(s, T, 9)
    # one more loss for every t but the last: still not warmed up
    s.update_with_losses(torch.arange(T - 1), torch.full((T - 1,), 50.0))
    assert not s.warmed_up()
    assert torch.equal(s.weights(), torch.ones(T, dtype=torch.float64))
    t, w = s.sample(32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(w, torch.ones(32))
    s.update_with_losses(torch.tensor([T - 1]), torch.tensor([3.0]))
    assert s.warmed_up()
    assert not torch.allclose(s.weights(), s.weights().mean().expand(T))


def test_weights_are_root_mean_square_of_last_ten_mixed_with_uniform():
    T = 5
    s = LossSecondMomentResampler(T)
    _fill(s, T, 12)  # 12 rounds: the window must keep rounds 2..11 only
    hist = np.array([[(t + 1) * (1 + 0.1 * r) for r in range(2, 12)] for t in range(T)])
    rms = np.sqrt((hist**2).mean(axis=1))
    expected = 0.999 * rms / rms.sum() + 0.001 / T
    np.testing.assert_allclose(s.weights().numpy(), expected, rtol=1e-12)
    assert abs(float(s.weights().sum()) - 1.0) < 1e-12


def test_repeated_timesteps_in_one_batch_are_all_recorded_in_order():
    s = LossSecondMomentResampler(2, history_per_term=3)
    s.update_with_losses(torch.tensor([0, 0, 0, 0, 1, 1, 1]), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]))
    state = s.state_dict()
    assert state["history"] == [[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]]
    assert state["counts"] == [3, 3]


def test_importance_weights_make_the_estimate_unbiased():
    T = 8
    s = LossSecondMomentResampler(T)
    _fill(s, T, 10, value=lambda t, r: (t - 3.5) ** 2 + 0.5 + r)
    p = s.weights() / s.weights().sum()
    t, w = s.sample(4000, generator=torch.Generator().manual_seed(1))
    # the returned weights are 1/(T p_t) for the drawn t
    torch.testing.assert_close(w.double(), 1.0 / (T * p[t]), rtol=1e-6, atol=0)
    # exact expectation over the sampling distribution: Σ_t p_t · w_t · L_t = mean_t L_t
    L = torch.rand(T, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 10
    estimate = (p * (1.0 / (T * p)) * L).sum()
    assert abs(float(estimate - L.mean())) < 1e-12
    # and the draws follow p (4000 draws: each frequency within 5 standard errors)
    freq = torch.bincount(t, minlength=T).double() / len(t)
    assert torch.all((freq - p).abs() < 5 * torch.sqrt(p * (1 - p) / len(t)))
    assert not torch.allclose(p, torch.full((T,), 1.0 / T, dtype=torch.float64), atol=1e-3)


def test_state_round_trips_through_json():
    T = 4
    s = LossSecondMomentResampler(T)
    _fill(s, T, 11)
    state = json.loads(json.dumps(s.state_dict()))
    s2 = LossSecondMomentResampler(T)
    s2.load_state_dict(state)
    assert torch.equal(s.weights(), s2.weights())
    a = s.sample(16, generator=torch.Generator().manual_seed(3))
    b = s2.sample(16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ConfigError, match="num_timesteps"):
        LossSecondMomentResampler(T + 1).load_state_dict(state)


def test_uniform_sampler_weights_are_one():
    t, w = UniformSampler(10).sample(64, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 10 and torch.equal(w, torch.ones(64))


def test_ddp_all_gather_applies_every_ranks_losses_in_rank_order(monkeypatch):
    """Fake a 2-rank process group: rank 1 contributed (t=[1], loss=[9]) with a smaller batch."""
    dist = torch.distributed
    # _all_gather_pairs gathers, in this order: batch sizes, padded t, padded losses.
    remote = [torch.tensor([1]), torch.tensor([1, 0, 0]), torch.tensor([9.0, 0.0, 0.0])]
    calls = []

    def all_gather(out, tensor):
        out[0].copy_(tensor)
        out[1].copy_(remote[len(calls)])
        calls.append(tensor.clone())

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather", all_gather)
    t, losses = resample._all_gather_pairs(torch.tensor([0, 1, 0]), torch.tensor([1.0, 2.0, 3.0]))
    assert t.tolist() == [0, 1, 0, 1]
    assert losses.tolist() == [1.0, 2.0, 3.0, 9.0]
    assert calls[0].tolist() == [3]  # this rank announced its batch size first


def _ddp_worker(rank, world, init_file, out_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    s = LossSecondMomentResampler(3, history_per_term=2)
    for step in range(3):
        n = 2 + rank  # ranks hold different batch sizes
        t = torch.tensor([(rank + step + i) % 3 for i in range(n)])
        s.update_with_losses(t, t.float() + 10 * rank + step)
    json.dump(s.state_dict(), open(f"{out_file}.{rank}", "w"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_hold_identical_histories(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "state")), nprocs=2)
    a = json.load(open(tmp_path / "state.0"))
    b = json.load(open(tmp_path / "state.1"))
    assert a == b and a["counts"] == [2, 2, 2]


@pytest.mark.slow
def test_trainer_uses_and_checkpoints_the_importance_sampler(tmp_path):
    """The improved-cifar10-kl combination (learned_range, kl, loss-second-moment) on digits-tiny."""
    from ddpm.config import apply_overrides
    from ddpm.presets import get_preset
    from ddpm.train.trainer import Trainer

    cfg = apply_overrides(get_preset("digits-tiny"), [
        "diffusion.num_timesteps=4", "diffusion.var_type=learned_range", "diffusion.loss_type=kl",
        "model.out_channels=2", "train.timestep_sampler=loss-second-moment", "train.steps=8",
        "train.ckpt_every=4", "train.batch_size=8"])
    trainer = Trainer(cfg, tmp_path / "run", device="cpu", progress=False, tensorboard=False)
    trainer.train(8)  # 64 losses over 4 timesteps: every t has its 10
    sampler = trainer.timestep_sampler
    assert isinstance(sampler, LossSecondMomentResampler) and sampler.warmed_up()
    weights = sampler.weights()
    assert not torch.allclose(weights, torch.full((4,), 0.25, dtype=torch.float64))
    trainer.close()
    resumed = Trainer(None, tmp_path / "run", device="cpu", resume=True, progress=False, tensorboard=False)
    assert torch.equal(resumed.timestep_sampler.weights(), weights)
    resumed.close()


def test_improved_ddpm_presets():
    from ddpm.presets import get_preset
    from ddpm.train.validate import validate_config

    hybrid, kl = validate_config(get_preset("improved-cifar10")), validate_config(get_preset("improved-cifar10-kl"))
    for cfg in (hybrid, kl):
        d = cfg.diffusion.build()
        assert (d.num_timesteps, d.var_type, cfg.model.out_channels) == (4000, "learned_range", 6)
        assert abs(d.betas[0] - 9.87e-6) < 5e-9  # Nichol & Dhariwal 2021 Eq. 17: cosine, T = 4000
        m, t = cfg.model, cfg.train
        assert (m.ch, m.num_res_blocks, m.attn_resolutions, m.dropout) == (128, 3, (16, 8), 0.3)
        assert (t.lr, t.batch_size) == (1e-4, 128)
    assert (hybrid.diffusion.loss_type, hybrid.train.timestep_sampler) == ("hybrid", "uniform")
    assert (kl.diffusion.loss_type, kl.train.timestep_sampler) == ("kl", "loss-second-moment")
    cond = validate_config(get_preset("cifar10-cond"))
    assert (cond.model.num_classes, cond.data.class_labels, cond.train.class_dropout) == (10, True, 0.1)
