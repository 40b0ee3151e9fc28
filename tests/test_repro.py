"""`ddpm repro` end to end at the hidden `smoke` scale (seconds): train, evaluate, plot, report."""

import json

import pytest

from ddpm.errors import ConfigError
from ddpm.repro import PAPER_TABLE4, VARIANTS, run_repro, variant_config


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("repro")


@pytest.fixture(autouse=True)
def no_inception(tmp_path_factory, monkeypatch):
    # offline, as on the CI machine: the weights are absent and must not be downloaded
    monkeypatch.setenv("DDPM_INCEPTION_WEIGHTS", str(tmp_path_factory.getbasetemp() / "absent.pth"))


def test_fig6_trains_then_reuses_the_model(out, capsys):
    report = run_repro("fig6", "smoke", out=out / "f", device="cpu")
    text = report.read_text()
    assert "![fig6](fig6.png)" in text and (out / "f" / "fig6.png").is_file()
    assert (out / "f" / "runs" / "eps-mse" / "checkpoints").is_dir()
    first = json.loads((out / "f" / "results.json").read_text())["timings"]
    assert "train eps-mse" in first
    run_repro("fig7", "smoke", out=out / "f", device="cpu")
    again = json.loads((out / "f" / "results.json").read_text())["timings"]
    assert "train eps-mse" not in again  # the trained checkpoint was reused
    assert (out / "f" / "fig7.png").is_file()


def test_table4_report_has_paper_and_ours(out):
    report = run_repro("table4", "smoke", out=out / "f", device="cpu").read_text()
    assert "1.77581" in report and "0.95136" in report  # the paper's first column
    rows = (out / "f" / "rate_distortion.csv").read_text().splitlines()
    assert len(rows) == 1 + 10  # T = 10 at smoke scale
    assert (out / "f" / "fig5_rate_distortion.png").is_file()
    res = json.loads((out / "f" / "results.json").read_text())["results"]["rate_distortion"]
    assert res["table4"][0]["rate_bpd"] == pytest.approx(res["rate"])


def test_table1_without_inception_weights_reports_nll(out):
    text = run_repro("table1", "smoke", out=out / "f", device="cpu").read_text()
    assert "FID/IS not computed: Inception weights not found (" in text
    assert "![samples of eps-mse](samples_eps-mse.png)" in text and (out / "f" / "samples_eps-kl.png").is_file()
    assert (out / "f" / "rate_distortion.csv").is_file()  # Fig. 5 comes free with the test-set pass
    assert "Ours (L_simple)" in text and "Ours (L, fixed isotropic Σ)" in text
    res = json.loads((out / "f" / "results.json").read_text())["results"]
    for v in ("eps-mse", "eps-kl"):
        assert res[v]["nll_test"]["num_images"] == 6 and res[v]["quality"] is None
        assert f"≤ {res[v]['nll_test']['bpd']:.3f}" in text
        # the digits features fill the quality columns offline (8×8 digits, scored upsampled)
        d = res[v]["digits"]
        assert d["n"] == 10 and d["features"] == "digits v2 (at 8×8, upsampled)" and d["fd"] > 0
        assert f"| {d['fd']:.2f} ± {d['fd_std']:.2f} | {d['kid']:.4f} ± {d['kid_std']:.4f} |" in text
    un = res["untrained"]
    assert f"The same network untrained: FD {un['fd']:.2f}" in text
    assert "Real vs real at the same n (the floor): FD" in text


def test_fig8_cli_and_errors(out, capsys):
    from ddpm.cli import main

    assert main(["repro", "fig8", "--scale", "smoke", "--out", str(out / "f"), "--device", "cpu"]) == 0
    assert "report.md" in capsys.readouterr().out and (out / "f" / "fig8.png").is_file()
    assert main(["repro", "fig9", "--scale", "smoke", "--out", str(out / "f"), "--device", "cpu"]) == 0
    assert "t = [0, 1, 2, 4, 5, 6, 8, 9, 10]" in (out / "f" / "report.md").read_text()  # Fig. 9's sweep
    assert main(["repro", "table2", "--scale", "smoke", "--ckpt", "x", "--out", str(out / "g")]) == 2
    with pytest.raises(SystemExit) as e:  # argparse misuse
        main(["repro", "table9"])
    assert e.value.code == 2
    with pytest.raises(ConfigError):
        run_repro("fig6", "huge")


def test_table2_variants_configure_the_six_objectives():
    from ddpm.presets import get_preset

    base = get_preset("repro-smoke")
    seen = set()
    for name in VARIANTS:
        c = variant_config(base, name)
        d = c.diffusion
        seen.add((d.mean_type, d.var_type, d.loss_type))
        assert c.model.out_channels == (2 if d.var_type == "learned" else 1)
        c.diffusion.build()  # every combination is a valid diffusion
    assert len(seen) == 6 and list(PAPER_TABLE4)[0] == 1000
