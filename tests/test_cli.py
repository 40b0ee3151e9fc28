"""`ddpm train/sample/info`: end to end on a tiny model, and every misuse -> exit 2 with one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main
from ddpm.presets import get_preset
from ddpm import checkpoint as ckpt
from helpers import call


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real 2-step digits-tiny run made with `ddpm train`."""
    d = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--preset", "digits-tiny", "--run-dir", str(d), "--steps", "2", "--batch-size", "4",
                 "--no-progress", "--set", "train.ckpt_every=1"]) == 0
    return d


@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory):
    """A class-conditional, EMA-only checkpoint dir (weights need not be trained for misuse tests)."""
    from ddpm.models.unet import UNet

    cfg = get_preset("digits-tiny")
    cfg.model.num_classes, cfg.data.class_labels = 10, True
    d = tmp_path_factory.mktemp("cond") / "ckpt"
    ckpt.save_checkpoint(d, config=cfg, step=0, ema_state=UNet(cfg.model).state_dict())
    return d


def test_train_info_sample_end_to_end(run_dir, tmp_path, capsys):
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step_0000001", "step_0000002"]
    rc, out, _ = call(["info", str(run_dir)], capsys)
    assert rc == 0
    assert "preset:      digits-tiny" in out and "step:        2" in out and "EMA present" in out
    n_params = sum(p.numel() for p in ckpt.load_checkpoint(run_dir).model.parameters())
    assert f"parameters:  {n_params:,}" in out
    rc, out, _ = call(["info", "--json", str(run_dir)], capsys)
    assert rc == 0 and '"preset": "digits-tiny"' in out

    grid, npz, folder = tmp_path / "g.png", tmp_path / "s.npz", tmp_path / "imgs"
    rc, out, err = call(["sample", "--ckpt", str(run_dir), "-n", "3", "--steps", "4", "--grid", str(grid),
                         "--npz", str(npz), "--out-dir", str(folder), "--no-progress", "--nrow", "3"], capsys)
    assert rc == 0, err
    assert Image.open(grid).size == (3 * 30 + 2, 30 + 2)  # 28 px + 2 px padding
    arr = np.load(npz)["arr_0"]
    assert arr.shape == (3, 28, 28, 1) and arr.dtype == np.uint8
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png", "000002.png", "provenance.json"]
    # same seed -> same images, raw weights differ from EMA
    rc, _, _ = call(["sample", "--ckpt", str(run_dir), "-n", "3", "--steps", "4", "--npz", str(tmp_path / "b.npz"),
                     "--no-progress"], capsys)
    assert np.array_equal(np.load(tmp_path / "b.npz")["arr_0"], arr)
    rc, _, _ = call(["sample", "--ckpt", str(run_dir), "-n", "3", "--steps", "4", "--raw", "--npz",
                     str(tmp_path / "r.npz"), "--no-progress"], capsys)
    assert rc == 0 and not np.array_equal(np.load(tmp_path / "r.npz")["arr_0"], arr)


def test_resume_and_init_from(run_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    rc, _, err = call(["train", "--resume", "--run-dir", str(run), "--steps", "3", "--no-progress"], capsys)
    assert rc == 0, err
    assert ckpt.latest_checkpoint(run).name == "step_0000003"
    new = tmp_path / "finetune"
    rc, _, err = call(["train", "--init-from", str(run_dir), "--run-dir", str(new), "--steps", "1", "--no-progress"],
                      capsys)
    assert rc == 0, err
    start = ckpt.load_checkpoint(run_dir)
    # the EMA continued from the source's EMA (no first-update copy): ema = d*ema0 + (1-d)*w1
    tuned = ckpt.load_checkpoint(new, use_ema=False)
    ema = ckpt.load_checkpoint(new)
    d = start.config.train.ema_decay
    for (k, e0), w1, e1 in zip(start.model.state_dict().items(), tuned.model.state_dict().values(),
                               ema.model.state_dict().values()):
        torch.testing.assert_close(e1, d * e0 + (1 - d) * w1, rtol=0, atol=1e-6)


def test_sample_class_all_on_conditional_model(cond_ckpt, tmp_path, capsys):
    rc, out, err = call(["sample", "--ckpt", str(cond_ckpt), "-n", "3", "--steps", "2", "--class", "all",
                         "--npz", str(tmp_path / "a.npz"), "--no-progress"], capsys)
    assert rc == 0, err
    from ddpm.sampling.api import generate

    loaded = ckpt.load_checkpoint(cond_ckpt)
    x = generate(loaded.model, loaded.diffusion, 3, steps=2, class_labels=[0, 1, 2], seed=0)
    from ddpm.images import to_uint8

    assert np.array_equal(np.load(tmp_path / "a.npz")["arr_0"], to_uint8(x))


def test_sample_speed_flags_compute_the_same_images(run_dir, tmp_path, capsys):
    """The CPU default is the plain fp32 path; channels_last and bf16 autocast change pixels by little."""
    from ddpm.images import to_uint8
    from ddpm.sampling.api import generate

    args = ["sample", "--ckpt", str(run_dir), "-n", "2", "--steps", "3", "--no-progress", "--device", "cpu"]
    loaded = ckpt.load_checkpoint(run_dir)
    plain = to_uint8(generate(loaded.model, loaded.diffusion, 2, steps=3, seed=0)).astype(int)
    for extra, max_levels in [([], 0), (["--channels-last", "--precision", "fp32"], 1),
                              (["--channels-last", "--precision", "bf16"], 16)]:
        out = tmp_path / f"{len(extra)}{''.join(extra)}.npz"
        rc, _, err = call(args + extra + ["--npz", str(out)], capsys)
        assert rc == 0, err
        diff = np.abs(np.load(out)["arr_0"].astype(int) - plain)
        assert diff.max() <= max_levels, (extra, diff.max())


MISUSE = {
    "unknown preset": ["train", "--preset", "nope", "--run-dir", "{tmp}/a"],
    "no preset": ["train", "--run-dir", "{tmp}/a"],
    "unknown --set key": ["train", "--preset", "digits-tiny", "--set", "train.bogus=1", "--run-dir", "{tmp}/a"],
    "malformed --set": ["train", "--preset", "digits-tiny", "--set", "trainlr=1", "--run-dir", "{tmp}/a"],
    "bad value type": ["train", "--preset", "digits-tiny", "--set", "train.batch_size=abc", "--run-dir", "{tmp}/a"],
    "zero steps": ["train", "--preset", "digits-tiny", "--steps", "0", "--run-dir", "{tmp}/a"],
    "negative steps": ["train", "--preset", "digits-tiny", "--steps", "-3", "--run-dir", "{tmp}/a"],
    "zero batch": ["train", "--preset", "digits-tiny", "--batch-size", "0", "--run-dir", "{tmp}/a"],
    "negative lr": ["train", "--preset", "digits-tiny", "--set", "train.lr=-1", "--run-dir", "{tmp}/a"],
    "bad precision": ["train", "--preset", "digits-tiny", "--precision", "fp16", "--run-dir", "{tmp}/a"],
    "existing run dir": ["train", "--preset", "digits-tiny", "--run-dir", "{run}"],
    "resume missing run": ["train", "--resume", "--run-dir", "{tmp}/missing"],
    "resume with preset": ["train", "--resume", "--preset", "digits-tiny", "--run-dir", "{run}"],
    "resume changing the model": ["train", "--resume", "--set", "model.ch=64", "--run-dir", "{run}"],
    "resume with init-from": ["train", "--resume", "--init-from", "{run}", "--run-dir", "{run}"],
    "missing data path": ["train", "--preset", "digits-tiny", "--data-source", "folder", "--data", "{tmp}/nodata",
                          "--run-dir", "{tmp}/a"],
    "empty data folder": ["train", "--preset", "digits-tiny", "--data-source", "folder", "--data", "{tmp}/empty",
                          "--run-dir", "{tmp}/a"],
    "derived network field": ["train", "--preset", "digits-tiny", "--set", "model.resolution=32",
                              "--run-dir", "{tmp}/a"],
    "conditional model without labels": ["train", "--preset", "digits-tiny", "--set", "model.num_classes=10",
                                         "--run-dir", "{tmp}/a"],
    "no GPU": ["train", "--preset", "digits-tiny", "--device", "cuda", "--run-dir", "{tmp}/a"],
    "init-from missing": ["train", "--init-from", "{tmp}/nockpt", "--run-dir", "{tmp}/a"],
    "sample missing ckpt": ["sample", "--ckpt", "{tmp}/nockpt"],
    "sample corrupt ckpt": ["sample", "--ckpt", "{tmp}/corrupt.safetensors", "--grid", "{tmp}/o.png"],
    "sample truncated ckpt": ["sample", "--ckpt", "{tmp}/trunc", "--grid", "{tmp}/o.png"],
    "sample zero images": ["sample", "--ckpt", "{run}", "-n", "0"],
    "sample negative seed": ["sample", "--ckpt", "{run}", "--seed", "-1"],
    "guidance without class": ["sample", "--ckpt", "{cond}", "--guidance", "2.0", "--grid", "{tmp}/o.png"],
    "guidance on unconditional model": ["sample", "--ckpt", "{run}", "--class", "1", "--guidance", "2.0",
                                        "--grid", "{tmp}/o.png"],
    "class out of range": ["sample", "--ckpt", "{cond}", "--class", "12", "--grid", "{tmp}/o.png"],
    "eta with ddpm sampler": ["sample", "--ckpt", "{run}", "--eta", "0.5", "--grid", "{tmp}/o.png"],
    "too many steps": ["sample", "--ckpt", "{run}", "--steps", "5000", "--grid", "{tmp}/o.png"],
    "unwritable output": ["sample", "--ckpt", "{run}", "--grid", "{tmp}/afile/o.png"],
    "grid is a directory": ["sample", "--ckpt", "{run}", "--grid", "{tmp}"],
    "raw on EMA-only checkpoint": ["sample", "--ckpt", "{cond}", "--raw", "--grid", "{tmp}/o.png"],
    "unknown sampler": ["sample", "--ckpt", "{run}", "--sampler", "nope"],
    "class not a number": ["sample", "--ckpt", "{cond}", "--class", "seven"],
    "cuda graph on CPU": ["sample", "--ckpt", "{run}", "--device", "cpu", "--cuda-graph", "--grid", "{tmp}/o.png"],
    "bad sample precision": ["sample", "--ckpt", "{run}", "--precision", "fp16"],
    "info missing": ["info", "{tmp}/nockpt"],
    "info with nothing to describe": ["info"],
    "info unknown preset": ["info", "--preset", "nope"],
    "info path and preset": ["info", "{run}", "--preset", "cifar10"],
    "bad device name": ["sample", "--ckpt", "{run}", "--device", "tpu", "--grid", "{tmp}/o.png"],
    "option without a value": ["sample", "--ckpt", "{run}", "--option", "eta", "--grid", "{tmp}/o.png"],
    "option of another sampler": ["sample", "--ckpt", "{run}", "--option", "eta=0.3", "--grid", "{tmp}/o.png"],
    "unknown sampler option": ["sample", "--ckpt", "{run}", "--sampler", "ddim", "--option", "order=2",
                               "--grid", "{tmp}/o.png"],
    "eta out of range": ["sample", "--ckpt", "{run}", "--sampler", "ddim", "--eta", "1.5"],
    "spacing unknown": ["sample", "--ckpt", "{run}", "--spacing", "cosine", "--grid", "{tmp}/o.png"],
    "figure sampler without part-way start": ["figure", "interpolate", "--ckpt", "{run}", "--steps", "3",
                                              "--out", "{tmp}/i.png"],
    "eval nll bad device": ["eval", "nll", "--ckpt", "{run}", "--device", "gpu0", "--out", "{tmp}/ev"],
    "info not a ddpm file": ["info", "{tmp}/foreign.safetensors"],
    "info not a checkpoint": ["info", "{tmp}/empty"],
}


@pytest.fixture(scope="module")
def misuse_env(tmp_path_factory, run_dir, cond_ckpt):
    tmp = tmp_path_factory.mktemp("misuse")
    (tmp / "empty").mkdir()
    (tmp / "afile").write_text("I am a file, not a directory")
    (tmp / "corrupt.safetensors").write_bytes(b"\x00garbage" * 10)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp / "foreign.safetensors")
    import shutil

    shutil.copytree(ckpt.latest_checkpoint(run_dir), tmp / "trunc")
    f = tmp / "trunc" / "ema.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return {"tmp": str(tmp), "run": str(run_dir), "cond": str(cond_ckpt)}


@pytest.mark.parametrize("case", sorted(MISUSE))
def test_misuse_exits_2_with_one_line(case, misuse_env, capsys):
    argv = [a.format(**misuse_env) for a in MISUSE[case]]
    rc, out, err = call(argv, capsys)
    assert rc == 2, (case, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, (case, err)
    assert "Traceback" not in err and "error" in lines[0]
    assert not os.path.exists(misuse_env["tmp"] + "/a/checkpoints")  # nothing was trained


def test_info_preset_counts_on_the_meta_device(capsys):
    rc, out, _ = call(["info", "--preset", "cifar10"], capsys)
    assert rc == 0 and "35,746,307" in out and "unet: UNet 3x32x32" in out and "sampling:    ddpm" in out
    rc, out, _ = call(["info", "--preset", "lsun-bedroom-large"], capsys)
    assert rc == 0 and "255,677,955" in out
    rc, out, _ = call(["info", "--preset", "improved-cifar10", "--json"], capsys)
    assert rc == 0 and json.loads(out)["model"]["out_channels"] == 6  # learned Σ: derived, not typed


def test_misuse_in_a_real_subprocess_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ddpm", "sample", "--ckpt", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


def _subcommands(parser, prefix=()):
    """(argv prefix, parser) of every leaf sub-command."""
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    seen = set()
    for name, sub in subs[0].choices.items():
        if id(sub) in seen:  # aliases (eval/evaluate, figure/figures)
            continue
        seen.add(id(sub))
        yield from _subcommands(sub, prefix + (name,))


# Commands that run a network or a data pipeline share the runtime conventions; info, plot and the
# weight converters do neither.
NO_RUNTIME = {("info",), ("plot",), ("convert", "tf"), ("convert", "dit"), ("convert", "diffusers"),
              ("convert", "to-diffusers"), ("export",)}


# Commands that write files named by a flag refuse to replace them without --overwrite; the others
# write into a run or work folder they resume (train, eval nll/rate-distortion/sweep, repro) or print.
OVERWRITE = {("sample",), ("figure", "progressive"), ("figure", "shared"), ("figure", "interpolate"),
             ("eval", "fid"), ("eval", "is"), ("eval", "fid-stats"), ("eval", "quality"), ("eval", "classifier"),
             ("convert", "tf"), ("convert", "dit"), ("convert", "diffusers"), ("convert", "to-diffusers"), ("export",)}


def test_every_subcommand_follows_the_conventions():
    """One set of conventions, checked on every leaf parser: help for every flag and no reST in any
    help text; --threads (bounded) and --progress/--no-progress on every command that computes;
    seeds of one type (0 <= seed < 2**63); --overwrite where a named file may be replaced; the
    guidance flag explained as diffusers' guidance_scale - 1."""
    from ddpm.cli import build_parser, common

    leaves = list(_subcommands(build_parser()))
    assert len(leaves) >= 14
    markup = ("``", ":mod:", ":func:", ":class:", ":meth:")
    for argv, parser in leaves:
        flags = {s for a in parser._actions for s in a.option_strings}
        assert "--help" in flags
        if argv not in NO_RUNTIME:
            assert {"--device", "--threads", "--progress", "--no-progress"} <= flags, argv
        assert ("--overwrite" in flags) == (argv in OVERWRITE), argv
        text = parser.format_help()
        assert not any(m in text for m in markup), (argv, [m for m in markup if m in text])
        for a in parser._actions:
            if a.option_strings and a.dest not in ("help", "version"):
                assert a.help, (argv, a.option_strings)  # every flag explains itself
            if "--seed" in a.option_strings:
                assert a.type is common.seed, argv
            if "--threads" in a.option_strings:
                assert a.type is common.threads, argv
            if "--guidance" in a.option_strings:
                assert "guidance_scale - 1" in a.help and "Ho & Salimans" in a.help, argv
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sample", "--ckpt", "x", "--threads", str(common.MAX_THREADS + 1)])


def test_version_and_one_line_warnings(capsys):
    import warnings

    from ddpm import __version__
    from ddpm.cli import _one_line_warning

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ddpm {__version__}"
    _one_line_warning(UserWarning("careful"), UserWarning, "x.py", 3)
    assert capsys.readouterr().err == "ddpm: warning: careful\n"
    assert warnings.showwarning is not _one_line_warning  # main restores the hook
