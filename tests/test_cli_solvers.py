"""The new samplers from the command line: `ddpm sample --fast`, sampler options, `ddpm eval nll
--method ode`, the figures, and the sweep's measured NFE for the adaptive ODE."""

import json

import numpy as np
import pytest

from ddpm import checkpoint as ckpt
from ddpm.cli import main
from helpers import call
from ddpm.sampling.api import FAST_SAMPLER, generate

ASSET = "src/ddpm/assets/digits"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("solvers") / "run"
    assert main(["train", "--preset", "digits-tiny", "--run-dir", str(d), "--steps", "1", "--batch-size", "4",
                 "--no-progress"]) == 0
    return d


def test_sample_fast_is_the_named_fast_sampler(run_dir, tmp_path, capsys):
    rc, _, err = call(["sample", "--ckpt", str(run_dir), "-n", "2", "--fast", "--npz", str(tmp_path / "f.npz"),
                       "--no-progress"], capsys)
    assert rc == 0, err
    loaded = ckpt.load_checkpoint(run_dir)
    want = generate(loaded.model, loaded.diffusion, 2, sampler=FAST_SAMPLER, seed=0)
    from ddpm.images import to_uint8

    assert np.array_equal(np.load(tmp_path / "f.npz")["arr_0"], to_uint8(want))
    rc, _, err = call(["sample", "--ckpt", str(run_dir), "--fast", "--sampler", "ddim"], capsys)
    assert rc == 2 and "--fast" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["--sampler", "heun", "--steps", "3", "--option", "s_churn=1", "--spacing", "trailing"],
    ["--sampler", "dpmpp-2m", "--steps", "3", "--option", "sde=true"],
    ["--sampler", "ode", "--option", "rtol=1e-3", "--option", "atol=1e-3"],
    ["--sampler", "pc", "--steps", "3", "--option", "snr=0.1"],
    ["--sampler", "ddim", "--steps", "3", "--spacing", "trailing"],
])
def test_sample_with_new_samplers_and_options(run_dir, tmp_path, capsys, argv):
    rc, out, err = call(["sample", "--ckpt", str(run_dir), "-n", "2", "--npz", str(tmp_path / "s.npz"),
                         "--no-progress", *argv], capsys)
    assert rc == 0, err
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (2, 28, 28, 1)


@pytest.mark.parametrize("argv, message", [
    (["--sampler", "heun", "--option", "s_churn=-1"], "s_churn"),
    (["--sampler", "unipc", "--option", "variant=bh3"], "bh1, bh2"),
    (["--sampler", "euler", "--spacing", "geometric"], "spacing"),
])
def test_bad_sampler_settings_are_one_line_errors(run_dir, tmp_path, capsys, argv, message):
    rc, _, err = call(["sample", "--ckpt", str(run_dir), "--grid", str(tmp_path / "o.png"), *argv], capsys)
    assert rc == 2 and message in err and err.count("\n") == 1


def test_eval_nll_ode(run_dir, tmp_path, capsys):
    out = tmp_path / "nll"
    argv = ["eval", "nll", "--ckpt", str(run_dir), "--num", "2", "--method", "ode", "--rtol", "1e-3",
            "--atol", "1e-3", "--out", str(out), "--no-progress"]
    rc, printed, err = call(argv, capsys)
    assert rc == 0, err
    summary = json.loads((out / "nll_ode.json").read_text())
    assert summary["method"] == "ode" and summary["num_images"] == 2 and summary["nfe_per_image"] > 0
    assert 0 < summary["bpd"] < 100 and "NLL (ODE)" in printed
    rc, _, err = call([*argv, "--no-clip"], capsys)
    assert rc == 2 and "never clips" in err


@pytest.mark.parametrize("figure", ["progressive", "shared"])
@pytest.mark.parametrize("sampler", [["--sampler", "dpmpp-2m", "--steps", "4"], ["--sampler", "ode"],
                                     ["--fast"]])
def test_figures_take_the_new_samplers(run_dir, tmp_path, capsys, figure, sampler):
    extra = ["--chains", "1", "--frames", "2"] if figure == "progressive" else ["--samples", "2", "--branch-at", "100"]
    rc, _, err = call(["figure", figure, "--ckpt", str(run_dir), "--out", str(tmp_path / "f.png"), *sampler,
                       *extra, "--no-progress"], capsys)
    assert rc == 0, err


def test_sweep_reports_the_measured_nfe_of_the_adaptive_ode(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["eval", "sweep", "--ckpt", ASSET, "-n", "10", "--samplers", "ode:rtol=0.01:atol=0.01,dpmpp-2m",
                 "--steps", "3", "--no-clip", "--json", str(out), "--no-progress"]) == 0
    rows = {r["sampler"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["dpmpp-2m"]["nfe"] == 3 and rows["dpmpp-2m"]["nfe_measured"] == 3
    assert not rows["dpmpp-2m"]["clip"] and "no clipping" in rows["dpmpp-2m"]["describe"]
    assert rows["ode"]["nfe"] == round(rows["ode"]["nfe_measured"], 1) and rows["ode"]["nfe"] > 10
