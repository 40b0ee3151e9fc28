"""The misuse table (issue 17): every sub-command given wrong numbers, wrong paths, wrong or hostile
files, or existing outputs. Each case must end with exit code 2 and exactly one line on stderr, no
traceback, and leave every file of the test folder as it was (by hash) with nothing added.

tests/test_cli.py keeps the older table of training, sampling and info misuse beside it."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm import checkpoint as ckpt
from ddpm.cli import main
from ddpm.presets import get_preset

DIGITS = Path(__file__).resolve().parents[1] / "src" / "ddpm" / "assets" / "digits"
BIG_SEED = str(2**63)
LONG = "x" * 300

class _Evil:
    """An object whose unpickling would run code: a tensors-only load must refuse it."""

    def __reduce__(self):
        return (print, ("unpickled!",))


CASES = {
    # ---------------------------------------------------------------- ddpm (top level)
    "no command": [],
    "unknown command": ["paint"],
    # ---------------------------------------------------------------- sample
    "sample: a trillion images": ["sample", "--ckpt", "{ck}", "-n", "1000000000000", "--npz", "{tmp}/o.npz"],
    "sample: a trillion images of every class": ["sample", "--ckpt", "{ck}", "-n", "1000000000000", "--class", "all",
                                                 "--npz", "{tmp}/o.npz"],
    "sample: a batch too big for memory": ["sample", "--ckpt", "{ck}", "-n", "300000", "--batch-size", "300000",
                                           "--npz", "{tmp}/o.npz"],
    "sample: seed 2**63": ["sample", "--ckpt", "{ck}", "--seed", BIG_SEED],
    "sample: negative seed": ["sample", "--ckpt", "{ck}", "--seed", "-5"],
    "sample: seed not a number": ["sample", "--ckpt", "{ck}", "--seed", "abc"],
    "sample: 100000 threads": ["sample", "--ckpt", "{ck}", "--threads", "100000"],
    "sample: zero threads": ["sample", "--ckpt", "{ck}", "--threads", "0"],
    "sample: guidance nan": ["sample", "--ckpt", "{ck}", "--class", "1", "--guidance", "nan"],
    "sample: guidance inf": ["sample", "--ckpt", "{ck}", "--class", "1", "--guidance", "inf"],
    "sample: negative guidance": ["sample", "--ckpt", "{ck}", "--class", "1", "--guidance", "-1",
                                  "--grid", "{tmp}/o.png"],
    "sample: eta nan": ["sample", "--ckpt", "{ck}", "--sampler", "ddim", "--eta", "nan"],
    "sample: negative eta": ["sample", "--ckpt", "{ck}", "--sampler", "ddim", "--eta", "-0.1", "--grid", "{tmp}/o.png"],
    "sample: grid format unknown": ["sample", "--ckpt", "{ck}", "--grid", "{tmp}/out.xyz"],
    "sample: grid exists": ["sample", "--ckpt", "{ck}", "--grid", "{tmp}/exists.png"],
    "sample: grid sidecar exists": ["sample", "--ckpt", "{ck}", "--grid", "{tmp}/lonely.png"],
    "sample: npz exists": ["sample", "--ckpt", "{ck}", "--npz", "{tmp}/exists.npz"],
    "sample: npz named .png": ["sample", "--ckpt", "{ck}", "--npz", "{tmp}/o.png"],
    "sample: grid under a file": ["sample", "--ckpt", "{ck}", "--grid", "{tmp}/afile/o.png"],
    "sample: out-dir is a file": ["sample", "--ckpt", "{ck}", "--out-dir", "{tmp}/afile"],
    "sample: out-dir with a foreign provenance.json": ["sample", "--ckpt", "{ck}", "--out-dir", "{tmp}/foreign_dir"],
    "sample: grid name too long": ["sample", "--ckpt", "{ck}", "--grid", "{tmp}/" + LONG + ".png"],
    "sample: zero steps": ["sample", "--ckpt", "{ck}", "--steps", "0"],
    "sample: negative steps": ["sample", "--ckpt", "{ck}", "--steps", "-1"],
    "sample: more steps than T": ["sample", "--ckpt", "{ck}", "--steps", "1001", "--grid", "{tmp}/o.png"],
    "sample: zero nrow": ["sample", "--ckpt", "{ck}", "--nrow", "0"],
    "sample: negative n": ["sample", "--ckpt", "{ck}", "-n", "-3"],
    "sample: zero batch": ["sample", "--ckpt", "{ck}", "--batch-size", "0"],
    "sample: negative class": ["sample", "--ckpt", "{ck}", "--class", "-1", "--grid", "{tmp}/o.png"],
    "sample: class 10 of 10": ["sample", "--ckpt", "{ck}", "--class", "10", "--grid", "{tmp}/o.png"],
    "sample: class all, unconditional model": ["sample", "--ckpt", "{uncond}", "--class", "all", "--grid", "{tmp}/o.png"],
    "sample: unknown spacing": ["sample", "--ckpt", "{ck}", "--spacing", "nope", "--grid", "{tmp}/o.png"],
    "sample: option not a number": ["sample", "--ckpt", "{ck}", "--sampler", "ddim", "--option", "eta=abc",
                                    "--grid", "{tmp}/o.png"],
    "sample: option without a name": ["sample", "--ckpt", "{ck}", "--option", "=3"],
    "sample: unknown option": ["sample", "--ckpt", "{ck}", "--sampler", "ddim", "--option", "s_churn=3",
                               "--grid", "{tmp}/o.png"],
    "sample: missing GPU": ["sample", "--ckpt", "{ck}", "--device", "cuda:7", "--grid", "{tmp}/o.png"],
    "sample: an npz as checkpoint": ["sample", "--ckpt", "{tmp}/garbage.npz", "--grid", "{tmp}/o.png"],
    "sample: checkpoint path not there": ["sample", "--ckpt", "{tmp}/../../nowhere/at/all", "--grid", "{tmp}/o.png"],
    "sample: Hub id not cached, offline": ["sample", "--ckpt", "acme/not-cached", "--grid", "{tmp}/o.png"],
    "sample: raw on EMA-only": ["sample", "--ckpt", "{ck}", "--raw", "--grid", "{tmp}/o.png"],
    "sample: cuda graph on CPU": ["sample", "--ckpt", "{ck}", "--device", "cpu", "--cuda-graph", "--grid", "{tmp}/o.png"],
    "sample: precision fp8": ["sample", "--ckpt", "{ck}", "--precision", "fp8"],
    "sample: no --ckpt": ["sample", "-n", "4"],
    "sample: garbage safetensors": ["sample", "--ckpt", "{tmp}/garbage.safetensors", "--grid", "{tmp}/o.png"],
    # ---------------------------------------------------------------- figure progressive
    "progressive: zero chains": ["figure", "progressive", "--ckpt", "{ck}", "--chains", "0"],
    "progressive: negative chains": ["figure", "progressive", "--ckpt", "{ck}", "--chains", "-2"],
    "progressive: zero frames": ["figure", "progressive", "--ckpt", "{ck}", "--frames", "0"],
    "progressive: more frames than T": ["figure", "progressive", "--ckpt", "{ck}", "--frames", "5000",
                                        "--out", "{tmp}/f.png"],
    "progressive: out format unknown": ["figure", "progressive", "--ckpt", "{ck}", "--out", "{tmp}/f.xyz"],
    "progressive: out exists": ["figure", "progressive", "--ckpt", "{ck}", "--out", "{tmp}/exists.png"],
    "progressive: npz exists": ["figure", "progressive", "--ckpt", "{ck}", "--out", "{tmp}/f.png",
                                "--npz", "{tmp}/exists.npz"],
    "progressive: seed 2**63": ["figure", "progressive", "--ckpt", "{ck}", "--seed", BIG_SEED],
    "progressive: 100000 threads": ["figure", "progressive", "--ckpt", "{ck}", "--threads", "100000"],
    "progressive: eta nan": ["figure", "progressive", "--ckpt", "{ck}", "--sampler", "ddim", "--eta", "nan"],
    "progressive: checkpoint missing": ["figure", "progressive", "--ckpt", "{tmp}/nockpt", "--out", "{tmp}/f.png"],
    # ---------------------------------------------------------------- figure shared
    "shared: zero samples": ["figure", "shared", "--ckpt", "{ck}", "--samples", "0"],
    "shared: branch after T": ["figure", "shared", "--ckpt", "{ck}", "--branch-at", "1001", "--out", "{tmp}/f.png"],
    "shared: negative branch": ["figure", "shared", "--ckpt", "{ck}", "--branch-at", "-5"],
    "shared: branch not a number": ["figure", "shared", "--ckpt", "{ck}", "--branch-at", "abc"],
    "shared: empty branch list": ["figure", "shared", "--ckpt", "{ck}", "--branch-at", ","],
    "shared: out under a file": ["figure", "shared", "--ckpt", "{ck}", "--out", "{tmp}/afile/f.png"],
    # ---------------------------------------------------------------- figure interpolate
    "interpolate: negative lambdas": ["figure", "interpolate", "--ckpt", "{ck}", "--lambdas", "-1"],
    "interpolate: zero lambdas": ["figure", "interpolate", "--ckpt", "{ck}", "--lambdas", "0"],
    "interpolate: t after T": ["figure", "interpolate", "--ckpt", "{ck}", "--t", "2000", "--out", "{tmp}/f.png"],
    "interpolate: index out of range": ["figure", "interpolate", "--ckpt", "{ck}", "--index", "0", "999999",
                                        "--t", "0", "--out", "{tmp}/f.png"],
    "interpolate: images missing": ["figure", "interpolate", "--ckpt", "{ck}", "--images", "{tmp}/a.png",
                                    "{tmp}/b.png", "--t", "0", "--out", "{tmp}/f.png"],
    "interpolate: images not images": ["figure", "interpolate", "--ckpt", "{ck}", "--images", "{tmp}/garbage.npz",
                                       "{tmp}/garbage.npz", "--t", "0", "--out", "{tmp}/f.png"],
    "interpolate: unknown data": ["figure", "interpolate", "--ckpt", "{ck}", "--data", "nosuch", "--t", "0",
                                  "--out", "{tmp}/f.png"],
    "interpolate: split val": ["figure", "interpolate", "--ckpt", "{ck}", "--split", "val"],
    "interpolate: out exists": ["figure", "interpolate", "--ckpt", "{ck}", "--out", "{tmp}/exists.png"],
    # ---------------------------------------------------------------- eval nll / rate-distortion
    "nll: zero images": ["eval", "nll", "--ckpt", "{ck}", "--num", "0"],
    "nll: zero batch": ["eval", "nll", "--ckpt", "{ck}", "--batch-size", "0"],
    "nll: seed 2**64": ["eval", "nll", "--ckpt", "{ck}", "--seed", str(2**64)],
    "nll: out is a file": ["eval", "nll", "--ckpt", "{ck}", "--out", "{tmp}/afile"],
    "nll: unknown data": ["eval", "nll", "--ckpt", "{ck}", "--data", "nosuch", "--out", "{tmp}/ev"],
    "nll: split val": ["eval", "nll", "--ckpt", "{ck}", "--split", "val"],
    "nll: MNIST not downloaded": ["eval", "nll", "--ckpt", "{ck}", "--data", "mnist", "--out", "{tmp}/ev"],
    "nll: --set is a train flag": ["eval", "nll", "--ckpt", "{ck}", "--set", "data.download=true"],
    "nll: zero threads": ["eval", "nll", "--ckpt", "{ck}", "--threads", "0"],
    "nll: damaged chunk meta": ["eval", "nll", "--ckpt", "{ck}", "--num", "2", "--out", "{tmp}/damaged_eval"],
    "rate-distortion: negative num": ["eval", "rate-distortion", "--ckpt", "{ck}", "--num", "-1"],
    "rate-distortion: out is a file": ["eval", "rate-distortion", "--ckpt", "{ck}", "--out", "{tmp}/afile"],
    "rate-distortion: garbage checkpoint": ["eval", "rate-distortion", "--ckpt", "{tmp}/garbage.safetensors",
                                            "--out", "{tmp}/ev"],
    # ---------------------------------------------------------------- eval fid / is / fid-stats
    "fid: neither samples nor ckpt": ["eval", "fid", "--ref", "{tmp}/ref.npz"],
    "fid: samples and ckpt": ["eval", "fid", "--samples", "{tmp}/s.npz", "--ckpt", "{ck}"],
    "fid: samples not an npz": ["eval", "fid", "--samples", "{tmp}/garbage.npz", "--ref", "{tmp}/ref.npz",
                                "--inception", "random"],
    "fid: samples with pickled objects": ["eval", "fid", "--samples", "{tmp}/pickle.npz", "--ref", "{tmp}/ref.npz",
                                          "--inception", "random"],
    "fid: reference not an npz": ["eval", "fid", "--samples", "{tmp}/s.npz", "--ref", "{tmp}/garbage.npz",
                                  "--inception", "random"],
    "fid: json exists": ["eval", "fid", "--samples", "{tmp}/s.npz", "--ref", "{tmp}/ref.npz", "--inception", "random",
                         "--json", "{tmp}/exists.json"],
    "fid: save-samples named .png": ["eval", "fid", "--ckpt", "{ck}", "--save-samples", "{tmp}/o.png",
                                     "--inception", "random"],
    "fid: zero splits": ["eval", "fid", "--ckpt", "{ck}", "--splits", "0"],
    "fid: zero num": ["eval", "fid", "--ckpt", "{ck}", "--num", "0"],
    "fid: inception weights missing": ["eval", "fid", "--samples", "{tmp}/s.npz", "--ref", "{tmp}/ref.npz",
                                       "--inception", "{tmp}/missing.pth"],
    "fid: sampler flags with samples": ["eval", "fid", "--samples", "{tmp}/s.npz", "--ref", "{tmp}/ref.npz",
                                        "--steps", "3", "--inception", "random"],
    "fid: samples without ref": ["eval", "fid", "--samples", "{tmp}/s.npz", "--inception", "random"],
    "fid: guidance inf": ["eval", "fid", "--ckpt", "{ck}", "--class", "all", "--guidance", "inf"],
    "fid: a trillion samples": ["eval", "fid", "--ckpt", "{ck}", "--num", "1000000000000", "--inception", "random"],
    "is: negative splits": ["eval", "is", "--ckpt", "{ck}", "--splits", "-1"],
    "is: --ref is for fid": ["eval", "is", "--ckpt", "{ck}", "--ref", "{tmp}/ref.npz"],
    "is: fewer samples than splits": ["eval", "is", "--samples", "{tmp}/s.npz", "--inception", "random"],
    "fid-stats: no --out": ["eval", "fid-stats", "--data", "digits"],
    "fid-stats: out exists": ["eval", "fid-stats", "--data", "digits", "--out", "{tmp}/exists.npz"],
    "fid-stats: out named .txt": ["eval", "fid-stats", "--data", "digits", "--out", "{tmp}/stats.txt"],
    "fid-stats: two channels": ["eval", "fid-stats", "--data", "digits", "--channels", "2", "--out", "{tmp}/s2.npz"],
    "fid-stats: zero resolution": ["eval", "fid-stats", "--data", "digits", "--resolution", "0", "--out", "{tmp}/s2.npz"],
    "fid-stats: unknown data": ["eval", "fid-stats", "--data", "nosuch", "--out", "{tmp}/s2.npz",
                                "--inception", "random"],
    # ---------------------------------------------------------------- eval quality / sweep
    "quality: zero images": ["eval", "quality", "--ckpt", "{ck}", "-n", "0"],
    "quality: class 12": ["eval", "quality", "--ckpt", "{ck}", "--class", "12", "--steps", "2"],
    "quality: unknown features": ["eval", "quality", "--ckpt", "{ck}", "--features", "inception"],
    "quality: json exists": ["eval", "quality", "--ckpt", "{ck}", "--json", "{tmp}/exists.json"],
    "quality: negative seed": ["eval", "quality", "--ckpt", "{ck}", "--seed", "-1"],
    "quality: zero batch": ["eval", "quality", "--ckpt", "{ck}", "--batch-size", "0"],
    "quality: not a digits model": ["eval", "quality", "--ckpt", "{rgb8}", "-n", "10", "--steps", "2"],
    "sweep: empty sampler list": ["eval", "sweep", "--ckpt", "{ck}", "--samplers", ",", "--steps", "2",
                                  "--json", "{tmp}/t.json"],
    "sweep: zero steps": ["eval", "sweep", "--ckpt", "{ck}", "--samplers", "ddim", "--steps", "0",
                          "--json", "{tmp}/t.json"],
    "sweep: steps not numbers": ["eval", "sweep", "--ckpt", "{ck}", "--samplers", "ddim", "--steps", "a,b",
                                 "--json", "{tmp}/t.json"],
    "sweep: guidance nan": ["eval", "sweep", "--ckpt", "{ck}", "--samplers", "ddim", "--steps", "2",
                            "--guidance", "nan", "--json", "{tmp}/t.json"],
    "sweep: table named .txt": ["eval", "sweep", "--ckpt", "{ck}", "--samplers", "ddim", "--steps", "2",
                                "--json", "{tmp}/t.txt"],
    "sweep: unknown sampler": ["eval", "sweep", "--ckpt", "{ck}", "--samplers", "nope:eta=1", "--steps", "2",
                               "--json", "{tmp}/t.json"],
    "sweep: plot format unknown": ["eval", "sweep", "--ckpt", "{ck}", "--samplers", "ddim", "--steps", "2",
                                   "--json", "{tmp}/t.json", "--plot", "{tmp}/p.xyz"],
    "sweep: no table": ["eval", "sweep", "--ckpt", "{ck}", "--samplers", "ddim", "--steps", "2"],
    "sweep: foreign table": ["eval", "sweep", "--ckpt", "{ck}", "--samplers", "ddim", "--steps", "2",
                             "--json", "{tmp}/exists.json"],
    # ---------------------------------------------------------------- info
    "distill progressive: missing teacher": ["distill", "progressive", "--teacher", "{tmp}/none", "--run-dir",
                                             "{tmp}/pd", "--from", "8", "--to", "2", "--round-steps", "5"],
    "distill progressive: 6 to 4 is no halving": ["distill", "progressive", "--teacher", "{ck}", "--run-dir",
                                                  "{tmp}/pd", "--from", "6", "--to", "4", "--round-steps", "5"],
    "distill progressive: zero round steps": ["distill", "progressive", "--teacher", "{ck}", "--run-dir", "{tmp}/pd",
                                              "--from", "8", "--to", "2", "--round-steps", "0"],
    "distill progressive: guidance nan": ["distill", "progressive", "--teacher", "{ck}", "--run-dir", "{tmp}/pd",
                                          "--from", "8", "--to", "2", "--round-steps", "5", "--guidance", "nan"],
    "distill consistency: missing teacher": ["distill", "consistency", "--teacher", "{tmp}/none", "--run-dir",
                                             "{tmp}/cd", "--steps", "5"],
    "distill consistency: target ema 2": ["distill", "consistency", "--teacher", "{ck}", "--run-dir", "{tmp}/cd",
                                          "--steps", "5", "--target-ema", "2"],
    "distill consistency: LPIPS": ["distill", "consistency", "--teacher", "{ck}", "--run-dir", "{tmp}/cd",
                                   "--steps", "5", "--metric", "lpips"],
    "eval classifier: not a classifier": ["eval", "classifier", "--ckpt", "{ck}", "--json", "{tmp}/c.json"],
    "eval classifier: bad range": ["eval", "classifier", "--ckpt", "{ck}", "--ranges", "5-2"],
    "sample: classifier scale without classifier": ["sample", "--ckpt", "{ck}", "--classifier-scale", "2"],
    "sample: classifier is a diffusion model": ["sample", "--ckpt", "{ck}", "--classifier", "{ck}", "--class", "1",
                                                "--grid", "{tmp}/o.png"],
    "plot: missing run": ["plot", "{tmp}/norun"],
    "plot: a checkpoint, not a run": ["plot", "{ck}"],
    "plot: unknown format": ["plot", "{ck}", "--out", "{tmp}/loss.xyz"],
    "plot: smoothing 1": ["plot", "{ck}", "--smooth", "1"],
    "plot: smoothing nan": ["plot", "{ck}", "--smooth", "nan"],
    "info: an npz": ["info", "{tmp}/garbage.npz"],
    "info: unknown preset": ["info", "--preset", "nope"],
    "info: two paths": ["info", "{ck}", "{ck}"],
    "info: missing path": ["info", "{tmp}/nockpt"],
    "info: garbage safetensors": ["info", "{tmp}/garbage.safetensors"],
    # ---------------------------------------------------------------- repro
    "repro: zero steps": ["repro", "table1", "--steps", "0", "--out", "{tmp}/r"],
    "repro: negative steps": ["repro", "table1", "--steps", "-1", "--out", "{tmp}/r"],
    "repro: unknown target": ["repro", "table9"],
    "repro: unknown scale": ["repro", "table1", "--scale", "huge"],
    "repro: out is a file": ["repro", "fig6", "--scale", "smoke", "--out", "{tmp}/afile"],
    "repro: table2 with a checkpoint": ["repro", "table2", "--scale", "smoke", "--ckpt", "{ck}", "--out", "{tmp}/r"],
    "repro: 100000 threads": ["repro", "fig6", "--threads", "100000"],
    # ---------------------------------------------------------------- export
    "export: out exists": ["export", "{ck}", "{tmp}/exported"],
    "export: average a checkpoint, not a run": ["export", "{ck}", "{tmp}/avg", "--average-last", "2"],
    "export: --weights without --average-last": ["export", "{ck}", "{tmp}/avg", "--weights", "raw"],
    "export: average zero": ["export", "{ck}", "{tmp}/avg", "--average-last", "0"],
    "export: nothing there": ["export", "{tmp}/nothing", "{tmp}/avg"],
    # ---------------------------------------------------------------- convert tf
    "convert tf: garbage npz": ["convert", "tf", "{tmp}/garbage.npz", "{tmp}/c", "--resolution", "32"],
    "convert tf: pickled objects": ["convert", "tf", "{tmp}/pickle.npz", "{tmp}/c", "--resolution", "32"],
    "convert tf: strings instead of numbers": ["convert", "tf", "{tmp}/strings.npz", "{tmp}/c", "--resolution", "32"],
    "convert tf: shapes of no U-Net": ["convert", "tf", "{tmp}/weird.npz", "{tmp}/c", "--resolution", "32"],
    "convert tf: shapes of no preset": ["convert", "tf", "{tmp}/weird.npz", "{tmp}/c", "--preset", "cifar10"],
    "convert tf: neither preset nor resolution": ["convert", "tf", "{tmp}/weird.npz", "{tmp}/c"],
    "convert tf: unknown preset": ["convert", "tf", "{tmp}/weird.npz", "{tmp}/c", "--preset", "nope"],
    "convert tf: out exists": ["convert", "tf", "{tmp}/weird.npz", "{tmp}/exported", "--resolution", "32"],
    "convert tf: npz missing": ["convert", "tf", "{tmp}/missing.npz", "{tmp}/c", "--resolution", "32"],
    "convert tf: zero resolution": ["convert", "tf", "{tmp}/weird.npz", "{tmp}/c", "--resolution", "0"],
    "convert tf: TF checkpoint without TensorFlow": ["convert", "tf", "{tmp}/model.ckpt-1", "{tmp}/c",
                                                     "--resolution", "32"],
    "convert tf: out is a file": ["convert", "tf", "{tmp}/weird.npz", "{tmp}/afile", "--resolution", "32"],
    # ---------------------------------------------------------------- convert diffusers / to-diffusers
    "convert dit: missing file": ["convert", "dit", "{tmp}/missing.pt", "{tmp}/c"],
    "convert dit: garbage file": ["convert", "dit", "{tmp}/garbage.pt", "{tmp}/c"],
    "convert dit: a pickle with code": ["convert", "dit", "{tmp}/evil.pt", "{tmp}/c"],
    "convert dit: out exists": ["convert", "dit", "{tmp}/garbage.pt", "{tmp}/exported"],
    "convert dit: zero heads": ["convert", "dit", "{tmp}/garbage.pt", "{tmp}/c", "--num-heads", "0"],
    "convert diffusers: no folder": ["convert", "diffusers", "{tmp}/nofolder", "{tmp}/c"],
    "convert diffusers: no config.json": ["convert", "diffusers", "{tmp}/empty", "{tmp}/c"],
    "convert diffusers: garbage config.json": ["convert", "diffusers", "{tmp}/badconfig", "{tmp}/c"],
    "convert diffusers: out exists": ["convert", "diffusers", "{tmp}/badconfig", "{tmp}/exported"],
    "to-diffusers: garbage source": ["convert", "to-diffusers", "{tmp}/garbage.safetensors", "{tmp}/c"],
    "to-diffusers: out exists": ["convert", "to-diffusers", "{ck}", "{tmp}/exported"],
    "to-diffusers: not a repo id": ["convert", "to-diffusers", "{ck}", "{tmp}/c", "--push-to-hub", "not a repo!"],
    "to-diffusers: repo id with a revision": ["convert", "to-diffusers", "{ck}", "{tmp}/c", "--push-to-hub",
                                              "acme/x@main"],
    # ---------------------------------------------------------------- train
    "train: seed -1": ["train", "--preset", "digits-tiny", "--set", "train.seed=-1", "--run-dir", "{tmp}/t"],
    "train: seed huge": ["train", "--preset", "digits-tiny", "--set", "train.seed=99999999999999999999",
                         "--run-dir", "{tmp}/t"],
    "train: batch of 1e11": ["train", "--preset", "digits-tiny", "--batch-size", "100000000000", "--run-dir", "{tmp}/t"],
    "train: lr NaN": ["train", "--preset", "digits-tiny", "--set", "train.lr=NaN", "--run-dir", "{tmp}/t"],
    "train: lr Infinity": ["train", "--preset", "digits-tiny", "--set", "train.lr=Infinity", "--run-dir", "{tmp}/t"],
    "train: 100000 threads": ["train", "--preset", "digits-tiny", "--threads", "100000", "--run-dir", "{tmp}/t"],
    "train: adam beta 1.5": ["train", "--preset", "digits-tiny", "--set", "train.adam_betas=0.9,1.5",
                             "--run-dir", "{tmp}/t"],
    "train: norm_eps 0": ["train", "--preset", "digits-tiny", "--set", "model.norm_eps=0", "--run-dir", "{tmp}/t"],
    "train: head size not dividing": ["train", "--preset", "digits-tiny", "--set", "model.attention_head_dim=7",
                                      "--run-dir", "{tmp}/t"],
    "train: downsample padding 3": ["train", "--preset", "digits-tiny", "--set", "model.downsample_padding=3",
                                    "--run-dir", "{tmp}/t"],
    "train: freq_shift past the width": ["train", "--preset", "digits-tiny", "--set", "model.freq_shift=1000",
                                         "--run-dir", "{tmp}/t"],
    "train: run dir under a file": ["train", "--preset", "digits-tiny", "--run-dir", "{tmp}/afile/run"],
}

# What some of the lines must say (the rest are checked for shape only).
SAYS = {
    "sample: a trillion images": "enough for about",
    "sample: a batch too big for memory": "use --batch-size",
    "sample: seed 2**63": "below 2**63",
    "sample: 100000 threads": "at most 1024 threads",
    "sample: guidance nan": "finite",
    "sample: grid format unknown": "must end in .png",
    "sample: grid exists": "pass --overwrite",
    "sample: grid under a file": "is a file, not a directory",
    "sample: grid name too long": "longer than 255 bytes",
    "sample: Hub id not cached, offline": "not in the Hub cache",
    "shared: branch after T": "--branch-at takes values in 0..1000",
    "interpolate: t after T": "--t takes values in 0..1000",
    "progressive: more frames than T": "--frames takes values in 1..1000",
    "nll: MNIST not downloaded": "--download on ddpm eval",
    "nll: damaged chunk meta": "unreadable",
    "fid: samples with pickled objects": "pickled Python objects, which ddpm never loads",
    "convert tf: pickled objects": "pickled Python objects, which ddpm never loads",
    "convert tf: garbage npz": "not an .npz archive",
    "convert tf: shapes of no U-Net": "do not describe the authors' U-Net",
    "convert tf: TF checkpoint without TensorFlow": "needs TensorFlow",
    "to-diffusers: out exists": "--overwrite",
    "export: out exists": "--overwrite",
    "export: average a checkpoint, not a run": "not a run directory with checkpoints, nor",
    "export: --weights without --average-last": "add --average-last",
    "export: average zero": "positive integer",
    "train: seed -1": "0..4294967295",
    "train: batch of 1e11": "at most 1,048,576",
    "train: lr NaN": "finite",
}


def _tree(root: Path) -> dict:
    """Every file's hash; empty ``.lock`` files (ddpm.lock: taken before a resumable output is read,
    released empty) are the locking mechanism, not an output."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*")) if not (p.name == ".lock" and p.stat().st_size == 0)}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The files the cases aim at; every one of them is protected."""
    tmp = tmp_path_factory.mktemp("misuse")
    shutil.copytree(DIGITS, tmp / "ck")
    cfg = get_preset("digits-tiny")
    from ddpm.models.unet import UNet

    ckpt.save_checkpoint(tmp / "uncond", config=cfg, step=0, ema_state=UNet(cfg.model).state_dict())
    (tmp / "empty").mkdir()
    (tmp / "afile").write_text("a file, not a folder")
    (tmp / "exists.png").write_bytes(b"\x89PNG previous output")
    (tmp / "exists.npz").write_bytes(b"previous npz")
    (tmp / "exists.json").write_text('{"previous": true}')
    (tmp / "lonely.png.json").write_text('{"sidecar": "of a grid that is gone"}')
    (tmp / "exported").mkdir()
    (tmp / "exported" / "keep.txt").write_text("a previous export")
    (tmp / "foreign_dir").mkdir()
    (tmp / "foreign_dir" / "provenance.json").write_text("not ours")
    (tmp / "damaged_eval" / "bpd_chunks").mkdir(parents=True)
    (tmp / "damaged_eval" / "bpd_chunks" / "meta.json").write_text("{half a json")
    (tmp / "garbage.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp / "garbage.safetensors").write_bytes(b"\x00garbage" * 64)
    (tmp / "model.ckpt-1.index").write_bytes(b"not tensorflow")
    (tmp / "garbage.pt").write_bytes(b"not a torch file at all")
    torch.save({"model": {"w": torch.zeros(1)}, "evil": _Evil()}, tmp / "evil.pt")
    np.savez(tmp / "pickle.npz", arr_0=np.array([{"evil": "payload"}], dtype=object))
    np.savez(tmp / "strings.npz", **{"model/conv_in/W": np.array(["a", "b"]), "model/conv_out/W": np.array(["c"])})
    np.savez(tmp / "weird.npz", **{"model/conv_in/W": np.zeros(3, np.float32),
                                   "model/conv_out/W": np.zeros((3, 3), np.float32)})
    (tmp / "badconfig").mkdir()
    (tmp / "badconfig" / "config.json").write_text("{not json")
    (tmp / "badconfig" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    np.savez(tmp / "s.npz", arr_0=np.zeros((4, 28, 28, 1), np.uint8))
    # a small statistics file: every case that names it fails before it is used
    np.savez(tmp / "ref.npz", mu=np.zeros(4), sigma=np.eye(4), num=np.int64(8))
    from ddpm.config import apply_overrides

    rgb = apply_overrides(get_preset("repro-smoke"), ["data.channels=3"])  # RGB 8x8: not digits
    ckpt.save_checkpoint(tmp / "rgb8", config=rgb, step=0, ema_state=UNet(rgb.model).state_dict())
    return tmp


@pytest.fixture(autouse=True)
def offline_and_bounded(env, monkeypatch):
    """No network (an empty Hub cache, offline), no datasets, and a machine with 8 GiB free, so the
    memory cases do not depend on the host."""
    hf = pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(env / "empty"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("DDPM_DATA", str(env / "empty"))
    import ddpm.sampling.memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 << 30)
    return hf


def leaf_commands(parser, prefix=()):
    """argv prefixes of every leaf sub-command (aliases once)."""
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix
        return
    seen = set()
    for name, sub in subs[0].choices.items():
        if id(sub) not in seen:
            seen.add(id(sub))
            yield from leaf_commands(sub, prefix + (name,))


def test_the_table_is_large_and_covers_every_subcommand():
    from ddpm.cli import build_parser

    assert len(CASES) >= 100
    covered = {tuple(a for a in argv[:2] if not a.startswith(("-", "{"))) for argv in CASES.values() if argv}
    for leaf in leaf_commands(build_parser()):
        assert any(c[: len(leaf)] == leaf for c in covered), leaf


@pytest.mark.parametrize("case", sorted(CASES))
def test_misuse(case, env, capsys):
    before = _tree(env)
    argv = [a.format(tmp=env, ck=env / "ck", uncond=env / "uncond", rgb8=env / "rgb8") for a in CASES[case]]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (case, rc, out, err)
    assert len(lines) == 1, (case, err)
    assert "Traceback" not in err and "error" in lines[0], (case, err)
    assert "share_until" not in err  # the internal name never reaches the user
    assert SAYS.get(case, "") in lines[0], (case, lines[0])
    assert _tree(env) == before, case  # nothing changed, nothing added
