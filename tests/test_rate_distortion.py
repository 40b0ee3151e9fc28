"""Rate and distortion along the reverse process (Fig. 5, Table 4) from per-t averages."""

import numpy as np
import pytest

from ddpm.evaluate.rate_distortion import plot_rate_distortion, rate_distortion


def synthetic(T=1000):
    rng = np.random.default_rng(0)
    terms = rng.uniform(0, 0.01, size=T)
    terms[0] = 1.9  # decoder L0
    mse = np.linspace(1e-5, 0.3, T)  # x̂0 error grows with t
    return terms, 1e-5, mse


def test_rate_and_distortion_definitions():
    terms, prior, mse = synthetic()
    rd = rate_distortion(terms, prior, mse)
    T = 1000
    # receiver holds x_T after 0 steps: only the prior has been sent; x̂0 from x_T uses code t = T−1
    assert rd.paper_t[0] == T and rd.rate[0] == pytest.approx(prior)
    assert rd.distortion[0] == pytest.approx(127.5 * np.sqrt(mse[T - 1]))
    # receiver holds x_1 after T−1 steps: the full rate L_1 + … + L_T, everything but the decoder
    assert rd.paper_t[-1] == 1 and rd.rate[-1] == pytest.approx(prior + terms[1:].sum())
    assert rd.distortion[-1] == pytest.approx(127.5 * np.sqrt(mse[0]))
    t = 400
    assert rd.at(t)[0] == pytest.approx(prior + terms[t:].sum())
    assert np.all(np.diff(rd.rate) >= 0)  # bits only accumulate


def test_table4_columns_follow_the_paper_layout():
    terms, prior, mse = synthetic()
    rows = rate_distortion(terms, prior, mse).table4()
    assert [r["reverse_time"] for r in rows] == [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100]
    # column "T − t + 1 = 1000" is t = 1: the full rate and the final distortion (Table 4's first column)
    assert rows[0]["rate_bpd"] == pytest.approx(prior + terms[1:].sum())
    assert rows[0]["distortion_rmse"] == pytest.approx(127.5 * np.sqrt(mse[0]))
    # column 100 is t = 901
    assert rows[-1]["rate_bpd"] == pytest.approx(prior + terms[901:].sum())
    small = rate_distortion(terms[:20], prior, mse[:20]).table4()
    assert [r["reverse_time"] for r in small] == [20, 18, 16, 14, 12, 10, 8, 6, 4, 2]


def test_csv_and_three_panel_plot(tmp_path):
    from PIL import Image

    terms, prior, mse = synthetic(50)
    rd = rate_distortion(terms[:50], prior, mse[:50], xstart_rmse_per_image=0.9 * np.sqrt(mse[:50]))
    lines = rd.write_csv(tmp_path / "rd.csv").read_text().splitlines()
    assert lines[0] == ("reverse_steps,paper_t,rate_bpd,distortion_rmse_0_255,"
                        "distortion_mean_per_image_rmse_0_255")
    assert len(lines) == 51 and lines[1].startswith("0,50,")
    assert float(lines[-1].split(",")[4]) == pytest.approx(0.9 * 127.5 * np.sqrt(mse[0]), rel=1e-6)
    png = plot_rate_distortion(rd, tmp_path / "rd.png")
    w, h = Image.open(png).size
    assert w > 2.5 * h  # three panels side by side


def test_cli_rate_distortion(tmp_path, capsys):
    from ddpm.cli import main
    from test_likelihood_eval import save_tiny_checkpoint

    ck = save_tiny_checkpoint(tmp_path / "ck", T=10)
    out = tmp_path / "rd"
    assert main(["eval", "rate-distortion", "--ckpt", str(ck), "--num", "3", "--batch-size", "3",
                 "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "reverse time T-t+1" in text and (out / "rate_distortion.png").is_file()
    rows = (out / "rate_distortion.csv").read_text().splitlines()
    assert len(rows) == 11
    nll = (out / "nll_terms.csv").read_text().splitlines()
    terms = np.array([float(r.split(",")[2]) for r in nll[1:]])
    # the last rate (x_1 held) + the decoder term = the whole bound printed beside it
    rate_full = float(rows[-1].split(",")[2])
    assert f"rate {rate_full:.4f} + distortion {terms[0]:.4f}" in text
