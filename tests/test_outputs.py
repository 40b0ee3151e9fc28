"""Outputs (ddpm.outputs): atomic writes under injected failures and a real full disk, the overwrite
policy, provenance read back from PNG text chunks, .npz keys and sidecars, and OS errors as one line."""

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import call
from ddpm.outputs import (OutputError, atomic_dir, atomic_write, check_output, describe_os_error, next_index,
                          read_provenance)

DIGITS = str(Path(__file__).resolve().parents[1] / "src" / "ddpm" / "assets" / "digits")
FAST = ["--steps", "2", "--threads", "1", "--no-progress"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary names a failed write could leave behind."""
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or ".tmp" in p.name)


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# ------------------------------------------------------------------------------ atomic writers
def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and leftovers(tmp_path) == []
    with atomic_write(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new" and leftovers(tmp_path) == []


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "folder"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    with pytest.raises(OutputError, match="--overwrite"):
        with atomic_dir(out):
            pass
    with pytest.raises(OSError):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("partial")
            enospc()
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and leftovers(tmp_path) == []
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("complete")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and leftovers(tmp_path) == []


def test_check_output_refuses_before_any_work(tmp_path):
    (tmp_path / "f.png").write_bytes(b"x")
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        check_output(tmp_path / "f.png", kind="png")
    assert check_output(tmp_path / "f.png", kind="png", overwrite=True) == tmp_path / "f.png"
    with pytest.raises(OutputError, match=r"must end in \.png"):
        check_output(tmp_path / "out.xyz", kind="png")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        check_output(tmp_path / "afile" / "o.png", kind="png")
    with pytest.raises(OutputError, match="longer than 255 bytes"):
        check_output(tmp_path / ("x" * 300 + ".png"), kind="png")
    with pytest.raises(OutputError, match="is a directory"):
        check_output(tmp_path, kind="png")
    assert check_output(tmp_path / "new" / "deeper" / "o.npz", kind="npz")  # parents are created later
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(OutputError, match="not writable"):
            check_output(ro / "o.png", kind="png")


def test_os_errors_are_described_in_one_line():
    line = describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/data/o.png"))
    assert line == "/data/o.png: No space left on device (ENOSPC); free some space or write somewhere else"
    assert "read-only" in describe_os_error(OSError(errno.EROFS, "Read-only file system", "/x"))
    assert "shorter name" in describe_os_error(OSError(errno.ENAMETOOLONG, "File name too long", "/x"))
    assert "\n" not in describe_os_error(OSError("plain"))


def test_next_index_continues_after_the_highest_number(tmp_path):
    assert next_index(tmp_path / "missing") == 0
    for name in ("000000.png", "000007.png", "notes.png", "12.png"):
        (tmp_path / name).write_bytes(b"")
    assert next_index(tmp_path) == 8


# ------------------------------------------------------------------------------ the CLI under failures
def test_full_disk_while_writing_leaves_previous_outputs_intact(tmp_path, capsys, monkeypatch):
    """ENOSPC injected into each writer, after part of the file was written: one line, exit 2, the
    previous grid/npz/folder/converted folder unchanged, no partial or temporary file."""
    grid, npz, folder = tmp_path / "g.png", tmp_path / "s.npz", tmp_path / "imgs"
    base = ["sample", "--ckpt", DIGITS, "-n", "2", *FAST]
    assert call(base + ["--grid", str(grid), "--npz", str(npz), "--out-dir", str(folder)], capsys)[0] == 0
    before = {p: digest(p) for p in [grid, npz, *folder.iterdir()]}

    real_save = Image.Image.save

    def png_then_full(self, fp, *a, **k):
        real_save(self, fp, *a, **k)  # the bytes went out ... then the disk was full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", png_then_full)
    for argv in (["--grid", str(grid), "--overwrite"], ["--out-dir", str(folder)]):
        rc, out, err = call(base + argv, capsys)
        assert rc == 2 and "No space left on device (ENOSPC)" in err and err.count("\n") == 1, err
        assert "Traceback" not in err and "free some space" in err
    monkeypatch.undo()

    real_savez = np.savez

    def npz_then_full(file, *a, **k):
        real_savez(file, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device", str(npz))

    monkeypatch.setattr(np, "savez", npz_then_full)
    rc, _, err = call(base + ["--npz", str(npz), "--overwrite"], capsys)
    assert rc == 2 and f"{npz}: No space left on device" in err and err.count("\n") == 1
    monkeypatch.undo()
    assert {p: digest(p) for p in [grid, npz, *folder.iterdir()]} == before
    assert leftovers(tmp_path) == []

    # a converted folder: the diffusers export fails half-way; the previous export stays whole
    out = tmp_path / "export"
    assert call(["convert", "to-diffusers", DIGITS, str(out)], capsys)[0] == 0
    files = {p.relative_to(out): digest(p) for p in out.rglob("*") if p.is_file()}
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", enospc)
    rc, _, err = call(["convert", "to-diffusers", DIGITS, str(out), "--overwrite"], capsys)
    assert rc == 2 and "ENOSPC" in err and err.count("\n") == 1
    assert {p.relative_to(out): digest(p) for p in out.rglob("*") if p.is_file()} == files
    assert leftovers(tmp_path) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 KiB tmpfs (root only; skipped elsewhere): a real full disk."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_real_full_disk(tiny_tmpfs, capsys):
    grid = tiny_tmpfs / "g.png"
    base = ["sample", "--ckpt", DIGITS, *FAST]
    assert call(base + ["-n", "4", "--grid", str(grid)], capsys)[0] == 0
    before = digest(grid)
    filler = tiny_tmpfs / "filler"
    with open(filler, "wb") as f:  # leave less room than the next output needs
        free = os.statvfs(tiny_tmpfs).f_bavail * os.statvfs(tiny_tmpfs).f_frsize
        f.write(b"\0" * max(0, free - 2048))
    rc, _, err = call(base + ["-n", "64", "--batch-size", "64", "--npz", str(tiny_tmpfs / "s.npz"),
                              "--grid", str(grid), "--overwrite"], capsys)
    assert rc == 2 and "No space left on device" in err and err.count("\n") == 1 and "Traceback" not in err
    assert digest(grid) == before and not (tiny_tmpfs / "s.npz").exists()
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["filler", "g.png", "g.png.json"]
    filler.unlink()  # space freed: the same command now succeeds
    assert call(base + ["-n", "64", "--batch-size", "64", "--npz", str(tiny_tmpfs / "s.npz"),
                        "--grid", str(grid), "--overwrite"], capsys)[0] == 0


def test_broken_pipe_exits_quietly(tmp_path):
    """`ddpm info --preset cifar10 | head -c 10`: no traceback, no message, the SIGPIPE status."""
    code = ("import sys; from ddpm.cli import main\n"
            "r, w = __import__('os').pipe(); __import__('os').close(r)\n"
            "sys.stdout = open(w, 'w', buffering=1)\n"
            "sys.exit(main(['info', '--preset', 'cifar10']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 141 and proc.stderr == ""


# ------------------------------------------------------------------------------ provenance and overwrite
def test_provenance_round_trip_and_overwrite_policy(tmp_path, capsys):
    grid, npz, folder = tmp_path / "g.png", tmp_path / "s.npz", tmp_path / "imgs"
    argv = ["sample", "--ckpt", DIGITS, "-n", "3", "--seed", "11", "--class", "all", "--sampler", "ddim",
            "--eta", "0.5", "--guidance", "1.5", *FAST]
    rc, out, err = call(argv + ["--grid", str(grid), "--npz", str(npz), "--out-dir", str(folder)], capsys)
    assert rc == 0, err
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("sampled 3 images (000000..000002) [ddim, 2 steps") and " s -> " in summary
    assert "eta=0.5" in summary and "guidance w=1.5" in summary and "seed 11" in summary

    png = read_provenance(grid)
    assert png == read_provenance(npz) == json.loads((tmp_path / "g.png.json").read_text())
    shipped_step = json.loads((Path(DIGITS) / "manifest.json").read_text())["step"]
    assert png["checkpoint"]["source"] == DIGITS and png["checkpoint"]["step"] == shipped_step
    assert png["checkpoint"]["weights"] == "ema" and png["checkpoint"]["hub_id"] is None
    assert png["sampler"]["sampler"] == "ddim" and png["sampler"]["options"] == {"eta": 0.5}
    assert png["sampler"]["guidance"] == 1.5 and png["sampler"]["steps"] == 2
    assert png["seed"] == 11 and png["labels"] == [0, 1, 2] and png["num_images"] == 3
    assert png["versions"]["torch"] == torch.__version__ and png["versions"]["ddpm"]
    assert set(png["seconds"]) == {"load", "sample"} and png["command"].startswith("ddpm sample")
    with np.load(npz, allow_pickle=False) as f:
        assert f["labels"].tolist() == [0, 1, 2] and f["arr_0"].shape == (3, 28, 28, 1)
    one = read_provenance(folder / "000002.png")
    assert one["index"] == 2 and one["label"] == 2 and one["seed"] == 11
    assert json.loads((folder / "provenance.json").read_text())["runs"][0]["indices"] == [0, 3]

    # no silent overwrite; --overwrite replaces; --out-dir goes on numbering with the next images
    before = digest(grid)
    rc, _, err = call(argv + ["--grid", str(grid)], capsys)
    assert rc == 2 and "already exists; pass --overwrite" in err and digest(grid) == before
    assert call(argv + ["--grid", str(grid), "--seed", "12", "--overwrite"], capsys)[0] == 0
    assert digest(grid) != before and read_provenance(grid)["seed"] == 12
    rc, out, _ = call(argv + ["-n", "2", "--out-dir", str(folder)], capsys)
    assert rc == 0 and "(000003..000004)" in out
    runs = json.loads((folder / "provenance.json").read_text())["runs"]
    assert [r["indices"] for r in runs] == [[0, 3], [3, 5]]
    assert read_provenance(folder / "000004.png")["label"] == 4  # --class all: label of global image 4
    # two runs of 3 + 2 images are the first 5 images of one run of 5
    rc, _, _ = call(argv + ["-n", "5", "--npz", str(tmp_path / "five.npz")], capsys)
    five = np.load(tmp_path / "five.npz")["arr_0"]
    got = np.stack([np.asarray(Image.open(folder / f"{i:06d}.png")) for i in range(5)])
    assert np.array_equal(got, five[..., 0])


def test_unconditional_npz_has_no_labels_and_null_label_is_minus_one(tmp_path, capsys):
    npz = tmp_path / "n.npz"
    assert call(["sample", "--ckpt", DIGITS, "-n", "2", *FAST, "--npz", str(npz)], capsys)[0] == 0
    with np.load(npz, allow_pickle=False) as f:
        assert f["labels"].tolist() == [-1, -1]  # conditional model, no --class: the null label
    assert read_provenance(npz)["labels"] == "null"


def test_figure_and_eval_outputs_carry_provenance(tmp_path, capsys):
    out = tmp_path / "fig.png"
    argv = ["figure", "progressive", "--ckpt", DIGITS, "--chains", "2", "--frames", "2", "--steps", "4",
            "--sampler", "ddim", "--threads", "1", "--no-progress", "--out", str(out), "--npz", str(tmp_path / "f.npz")]
    rc, stdout, err = call(argv, capsys)
    assert rc == 0, err
    rec = read_provenance(out)
    assert rec["figure"] == "progressive" and rec["sampler"]["sampler"] == "ddim" and rec["seed"] == 0
    assert read_provenance(tmp_path / "f.npz")["frames_t"] == rec["frames_t"]
    assert stdout.strip().splitlines()[-1].startswith("progressive figure, 2 chains x 2 frames")
    rc, _, err = call(argv, capsys)
    assert rc == 2 and "--out" in err and "already exists" in err
    # eval nll: the summary JSON records the checkpoint, seed and versions too
    from ddpm import checkpoint as ckpt
    from ddpm.models.unet import UNet
    from ddpm.presets import get_preset

    cfg = get_preset("digits-tiny")
    cfg.diffusion.num_timesteps = 4
    ckpt.save_checkpoint(tmp_path / "t4", config=cfg, step=7, ema_state=UNet(cfg.model).state_dict())
    rc, _, err = call(["eval", "nll", "--ckpt", str(tmp_path / "t4"), "--data", "digits", "--num", "2",
                       "--seed", "3", "--threads", "1", "--no-progress", "--out", str(tmp_path / "ev")], capsys)
    assert rc == 0, err
    rec = json.loads((tmp_path / "ev" / "nll.json").read_text())["provenance"]
    assert rec["checkpoint"]["step"] == 7 and rec["seed"] == 3 and rec["data"] == "digits/test"


def _measured_peak(net, x, t, kw) -> int:
    """Peak bytes allocated during one real no-grad forward, from the profiler's memory records."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        net(x, t, **kw)
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        pytest.skip("this torch's profiler exposes no memory records")
    live = peak = 0
    for _, n in sorted((e.start_ns(), e.nbytes()) for e in results.events() if e.name() == "[memory]"):
        live += n
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("preset", ["digits-tiny", "digits"])
def test_memory_estimate_against_a_measured_forward(preset):
    """The fake-tensor estimate of a forward pass's peak is within a factor 2 of the peak the profiler
    measures on a real forward (measured here: 1.5x and 0.9x for these two at batch 4)."""
    from ddpm.models.unet import UNet
    from ddpm.presets import get_preset
    from ddpm.sampling.memory import forward_peak_bytes

    cfg = get_preset(preset).model
    net = UNet(cfg).eval()
    B = 4
    kw = {"y": torch.zeros(B, dtype=torch.long)} if cfg.num_classes else {}
    measured = _measured_peak(net, torch.zeros(B, *cfg.image_shape), torch.zeros(B, dtype=torch.long), kw)
    estimate = forward_peak_bytes(cfg, 1) * B
    assert 0.5 <= estimate / measured <= 2.0, (estimate, measured)


def test_memory_check_refuses_and_says_what_fits():
    from ddpm.errors import ConfigError
    from ddpm.presets import get_preset
    from ddpm.sampling.memory import check_sampling_memory, forward_peak_bytes

    cfg = get_preset("digits-tiny").model
    peak = forward_peak_bytes(cfg, 1)
    check_sampling_memory(cfg, 1000, 100, available=1 << 30)  # 1 GiB is plenty
    with pytest.raises(ConfigError, match=r"enough for about [\d,]+: draw them in parts"):
        check_sampling_memory(cfg, 10**12, 64, available=1 << 30)
    with pytest.raises(ConfigError, match=r"use --batch-size [\d,]+ or less"):
        check_sampling_memory(cfg, 20_000, 20_000, available=1 << 30)
    fit = int((1 << 30) / 1.25 // peak)  # the batch the message proposes passes its own check
    check_sampling_memory(cfg, fit // 2, fit // 2, available=1 << 30)
