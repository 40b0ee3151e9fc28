"""Monitoring (issue 18): per-timestep-bucket loss and timings in metrics.jsonl, TensorBoard scalars and
sample grids, `ddpm plot RUN`, and `ddpm info RUN`'s progress summary."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main
from ddpm.config import apply_overrides
from ddpm.presets import get_preset
from ddpm.train import metrics as metrics_mod
from ddpm.train.metrics import bucket_edges, read_metrics
from ddpm.train.plot import quality_points, smooth
from ddpm.train.trainer import Trainer


def cfg(*more):
    return apply_overrides(get_preset("digits-tiny"), ["train.batch_size=4", "train.ckpt_every=2", *more])


class FakeWriter:
    """Records what the trainer sends to TensorBoard."""

    def __init__(self):
        self.scalars, self.images = {}, []

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, value))

    def add_image(self, tag, img, step, dataformats="CHW"):
        self.images.append((tag, np.asarray(img), step, dataformats))

    def close(self):
        pass


def test_loss_by_t_is_the_mean_loss_of_each_timestep_bucket(tmp_path):
    """Two steps per record; every per-example loss the objective returns is put in its bucket by hand."""
    t = Trainer(cfg("train.log_every=2"), tmp_path / "run", progress=False, tensorboard=False)
    seen = []
    real = t.objective.losses

    def losses(model, x0, tt, noise, kw):
        out = real(model, x0, tt, noise, kw)
        seen.append((tt.clone(), out["loss"].detach().clone()))
        return out

    t.objective.losses = losses
    t.train(steps=4)
    t.close()
    recs = read_metrics(tmp_path / "run")
    assert [r["step"] for r in recs] == [2, 4]
    edges = bucket_edges(100)
    assert edges == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    for r, pairs in zip(recs, (seen[0:2], seen[2:4])):
        tt = torch.cat([p[0] for p in pairs])
        ll = torch.cat([p[1] for p in pairs])
        want = []
        for k in range(10):
            m = (tt >= edges[k]) & (tt < edges[k + 1])
            want.append(float(ll[m].mean()) if m.any() else None)
        got = r["loss_by_t"]
        assert [g is None for g in got] == [w is None for w in want]
        assert [g for g in got if g is not None] == pytest.approx([w for w in want if w is not None], rel=1e-6)
        assert r["loss"] == pytest.approx(float(ll.mean()), rel=1e-6)  # uniform t: the weights are 1
    for r in recs:
        assert r["wall_time"] > 1.6e9 and r["elapsed"] > 0 and r["eta"] >= 0
    assert recs[-1]["eta"] == 0.0


def test_tensorboard_gets_per_t_scalars_and_sample_grids(tmp_path):
    t = Trainer(cfg("train.log_every=1", "train.sample_every=2", "train.num_sample_images=4", "train.sample_steps=2"),
                tmp_path / "run", progress=False, tensorboard=False)
    fake = t.metrics._tb = FakeWriter()
    t.train(steps=2)
    t.close()
    assert [s for s, _ in fake.scalars["train/loss"]] == [1, 2]
    assert "train/wall_time" not in fake.scalars
    per_t = {k: v for k, v in fake.scalars.items() if k.startswith("loss_by_t/")}
    assert per_t and set(per_t) <= {f"loss_by_t/t{a:04d}-{b - 1:04d}" for a, b in zip(range(0, 100, 10), range(10, 101, 10))}
    rec = read_metrics(tmp_path / "run")[-1]
    for k, v in enumerate(rec["loss_by_t"]):
        if v is not None:
            assert per_t[f"loss_by_t/t{10 * k:04d}-{10 * k + 9:04d}"][-1] == (2, v)
    [(tag, img, step, fmt)] = fake.images
    png = np.asarray(Image.open(tmp_path / "run" / "samples" / "step_0000002.png"))
    assert (tag, step, fmt) == ("samples", 2, "HWC") and img.dtype == np.uint8
    assert np.array_equal(img[..., 0], png)  # the very grid written as PNG


def test_real_tensorboard_event_file(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = Trainer(cfg("train.log_every=1", "train.sample_every=1", "train.num_sample_images=2", "train.sample_steps=2"),
                tmp_path / "run", progress=False, tensorboard=True)
    t.train(steps=1)
    t.close()
    ea = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    ea.Reload()
    assert "samples" in ea.Tags()["images"] and "train/loss" in ea.Tags()["scalars"]
    assert any(tag.startswith("loss_by_t/") for tag in ea.Tags()["scalars"])


def test_tensorboard_switch(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(metrics_mod, "tensorboard_available", lambda: False)
    args = ["train", "--preset", "digits-tiny", "--run-dir", str(tmp_path / "r"), "--steps", "1", "--threads", "1",
            "--no-progress", "--set", "train.batch_size=4"]
    assert main([*args, "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[tensorboard]"' in err[0]
    assert not (tmp_path / "r").exists()  # refused before the run directory is made
    assert main([*args[:4], str(tmp_path / "r2"), *args[5:]]) == 0  # default: on only when installed
    assert not (tmp_path / "r2" / "tensorboard").exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("monitor") / "run"
    t = Trainer(cfg("train.log_every=1", "train.sample_every=3", "train.num_sample_images=2", "train.sample_steps=2",
                    "train.steps=20"),
                d, progress=False, tensorboard=False)
    t.train(steps=6)
    t.close()
    return d


def test_plot_writes_the_loss_figure(run, tmp_path, capsys):
    assert main(["plot", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run / 'loss.png'}"
    one = Image.open(run / "loss.png")
    assert one.format == "PNG" and one.size[0] > 500
    (run / "eval").mkdir()
    (run / "eval" / "quality.json").write_text(json.dumps({"sampler": "ddim", "steps": 10, "n": 100, "step": 4,
                                                           "fd": 12.5, "fd_std": 0.7, "describe": "DDIM 10"}))
    (run / "sweep.json").write_text(json.dumps({"rows": [{"sampler": "ddpm", "steps": None, "n": 100, "step": 6,
                                                          "fd": 9.0, "fd_std": 0.5}], "checkpoint": "x"}))
    (run / "unrelated.json").write_text(json.dumps({"hello": 1}))
    assert [(r["step"], r["fd"]) for r in quality_points(run)] == [(4, 12.5), (6, 9.0)]
    out = tmp_path / "plots" / "curve.png"
    assert main(["plot", str(run), "--out", str(out)]) == 0
    two = Image.open(out)
    assert two.size[1] > one.size[1]  # a second panel: FD against step


def test_plot_misuse_is_one_line(run, tmp_path, capsys):
    for argv, message in ((["plot", str(run), "--out", str(tmp_path / "x.xyz")], "pick one of those suffixes"),
                          (["plot", str(tmp_path)], "has no metrics.jsonl"),
                          (["plot", str(run), "--smooth", "1.5"], "expected a number in")):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse rejects the value itself
            code = e.code
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_smoothing_is_debiased():
    assert smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert smooth([1.0, 3.0], 0.0) == [1.0, 3.0]
    assert smooth([0.0, 1.0], 0.5) == pytest.approx([0.0, 0.5 / 0.75])


def test_info_summarises_the_run(run, capsys):
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    last = read_metrics(run)[-1]
    assert f"progress:    step 6 of 20 (30.0%); last logged loss {last['loss']:.4g}; trained 00:00:" in out
    assert f"newest grid: {run / 'samples' / 'step_0000006.png'}" in out
    assert "verifies:    step_0000004 yes (sha256)" in out and "verifies:    step_0000006 yes (sha256)" in out
    assert "resumable:   yes, from step_0000006" in out
