"""The benchmark's paired-ratio statistics and its Markdown report (no timing: that is bench.py's job)."""

import json
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def test_paired_ratios_are_theirs_over_ours_per_round(bench):
    s = bench.paired_ratio_summary([2.0, 1.0, 4.0], [3.0, 1.0, 2.0])
    assert s["per_round"] == pytest.approx([1.5, 1.0, 0.5])
    assert s["median"] == pytest.approx(1.0)
    # The bootstrap median is one of the per-round values, so the interval cannot leave their range.
    assert 0.5 <= s["ci_low"] <= s["median"] <= s["ci_high"] <= 1.5


def test_identical_rounds_give_a_zero_width_interval_and_a_sure_verdict(bench, report):
    s = bench.paired_ratio_summary([1.0] * 5, [1.2] * 5)
    assert s["ci_low"] == pytest.approx(1.2) and s["ci_high"] == pytest.approx(1.2)
    assert report.verdict(s, 1.1) == "met"
    assert report.verdict(bench.paired_ratio_summary([1.0] * 5, [1.05] * 5), 1.1) == "not met"


def test_spread_rounds_are_undecided_and_the_interval_is_reproducible(bench, report):
    ours = [1.0] * 9
    theirs = [0.85, 0.95, 1.0, 1.05, 1.1, 1.12, 1.2, 1.25, 1.3]
    a, b = bench.paired_ratio_summary(ours, theirs), bench.paired_ratio_summary(ours, theirs)
    assert a == b  # fixed seed: a results file always renders the same
    assert a["ci_low"] < 1.1 <= a["ci_high"]
    assert report.verdict(a, 1.1) == "undecided"
    # A wider interval at higher confidence.
    wide = bench.paired_ratio_summary(ours, theirs, confidence=0.99)
    assert wide["ci_low"] <= a["ci_low"] and wide["ci_high"] >= a["ci_high"]


def test_summarize_and_report_render_the_paired_table(bench, report):
    ddpm = bench.Contender("ddpm", run=lambda: None, units=1, times=[1.0, 1.0, 1.0], cpu_times=[1.0, 1.0, 1.0])
    other = bench.Contender("diffusers+tricks", run=lambda: None, units=1, times=[1.3, 1.2, 1.25],
                            cpu_times=[1.2, 1.2, 1.2])
    res = bench.summarize("ddim", [ddpm, other], batch=8, chain=50, flops_per_image=None)
    assert res["paired_ratios"]["ddpm/diffusers+tricks"]["median"] == pytest.approx(1.25)
    doc = {"command": "bench.py", "date_utc": "2026-11-23", "preset": "cifar10", "params": 35746307,
           "max_abs_diff_vs_diffusers": 3.3e-6, "ddpm_train_step": "Trainer.train_step",
           "flops": {"forward_per_image": 12.44e9, "train_step_per_image": 37.32e9},
           "machine": {"processor": "cpu", "cpu_count": 2, "torch": "2.13.0", "torch_threads": 2,
                       "python": "3.11", "loadavg_start": [0.0], "loadavg_end": [2.0]},
           "modes": {"fp32": {"peak_flops": 1e11, "peak_source": "measured", "ddim": res}}}
    text = report.render(json.loads(json.dumps(doc)))
    assert "| diffusers+tricks | 1.250× | 1.200–1.300× | met |" in text


def test_report_still_renders_results_files_without_pairing(report):
    text = report.render(json.loads((BENCH_DIR / "results" / "cpu_run6_idle.json").read_text()))
    assert "| ddpm | 2.973 |" in text and "bootstrap" not in text


def test_gpu_results_are_judged_against_the_gpu_target(bench, report):
    ddpm = bench.Contender("ddpm", run=lambda: None, units=1, times=[1.0] * 3, cpu_times=[1.0] * 3)
    other = bench.Contender("diffusers+tricks", run=lambda: None, units=1, times=[1.3] * 3, cpu_times=[1.3] * 3)
    res = bench.summarize("train", [ddpm, other], batch=128, chain=None, flops_per_image=None)
    doc = {"command": "bench.py", "date_utc": "2026-11-23", "preset": "cifar10", "params": 35746307,
           "flops": {"forward_per_image": 12.44e9, "train_step_per_image": 37.32e9},
           "machine": {"processor": "cpu", "gpu": "NVIDIA H100", "cpu_count": 16, "torch": "2.13.0",
                       "torch_threads": 16, "python": "3.11", "loadavg_start": [0.0], "loadavg_end": [1.0]},
           "modes": {"bf16": {"peak_flops": 9.9e14, "peak_source": "datasheet", "train": res}}}
    text = report.render(doc)
    assert "| ≥ 1.5× target |" in text and "| diffusers+tricks | 1.300× | 1.300–1.300× | not met |" in text
