"""The quality instrument: metric maths against closed forms, the shipped digits classifier, the
real-vs-real floor, and `ddpm eval quality|sweep` end to end on the shipped checkpoint."""

import json

import numpy as np
import pytest
import torch

from ddpm.cli import main
from ddpm.errors import ConfigError
from ddpm.evaluate import digits_classifier as dc
from ddpm.evaluate import quality as q
from ddpm.evaluate.sweep import parse_samplers
from helpers import exit_code


# -------------------------------------------------------------------------------------- maths
def test_fd_of_gaussians_matches_the_closed_form():
    # N(m1, diag(s1²)) vs N(m2, diag(s2²)): FD = |m1-m2|² + Σ (s1 - s2)²
    rng = np.random.default_rng(0)
    d, n = 4, 200_000
    m1, m2 = np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.5, 1.0, 0.0, 2.0])
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([1.0, 1.0, 1.5, 3.0])
    a = m1 + s1 * rng.standard_normal((n, d))
    b = m2 + s2 * rng.standard_normal((n, d))
    exact = ((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert q.fd(a, b) == pytest.approx(exact, rel=0.02)
    assert q.fd(a, a) == pytest.approx(0.0, abs=1e-8)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(1)
    vals = [q.mmd2_unbiased(rng.standard_normal((50, 8)), rng.standard_normal((50, 8))) for _ in range(400)]
    se = np.std(vals) / np.sqrt(len(vals))
    assert abs(np.mean(vals)) < 3 * se  # expectation 0: an unbiased estimator
    assert min(vals) < 0 < max(vals)  # so single values straddle 0, unlike a biased V-statistic
    shifted, _ = q.kid(rng.standard_normal((300, 8)) + 0.5, rng.standard_normal((300, 8)), subset=100, subsets=20)
    assert shifted > 20 * se


def test_precision_recall_on_constructed_point_sets():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((400, 2))
    same = rng.standard_normal((400, 2))
    p, r = q.precision_recall(real, same)
    assert p > 0.9 and r > 0.9
    # a generator that collapsed to one corner of the data: precise but without recall
    collapsed = real[(real[:, 0] > 0.5) & (real[:, 1] > 0.5)] + 0.01 * rng.standard_normal((1, 2))
    p, r = q.precision_recall(real, np.repeat(collapsed, 4, axis=0)[:400])
    assert p > 0.95 and r < 0.3
    # samples far from the data: neither
    p, r = q.precision_recall(real, same + 50.0)
    assert p == 0.0 and r == 0.0


def _class_mixture(n, rng, means, balanced=True):
    labels = np.arange(n) % len(means) if balanced else rng.integers(0, len(means), n)
    return means[labels] + rng.standard_normal((n, means.shape[1])), labels


def test_fd_plus_minus_follows_set_to_set_spread_of_class_balanced_samples():
    """Features that separate 10 classes, samples with 20 of each class (as `--class all` asks): the FD of
    independent sets spreads by ~0.07; the plain bootstrap, which redraws the class proportions, says
    ~9× that; the stratified delete-half jackknife stays within 3×."""
    rng = np.random.default_rng(5)
    means = 3 * rng.standard_normal((10, 16))
    ref, _ = _class_mixture(20_000, rng, means, balanced=False)
    to_ref = q._FDTo(ref)
    spread = np.std([to_ref(_class_mixture(200, rng, means)[0]) for _ in range(30)], ddof=1)
    a, labels = _class_mixture(200, rng, means)
    bootstrap = np.std([to_ref(a[rng.integers(0, 200, 200)]) for _ in range(20)])
    value, halves = q.fd_halves(a, ref, strata=labels)
    assert value == pytest.approx(to_ref(a))
    assert bootstrap > 4 * spread
    assert 0.5 * spread < halves < 3 * spread
    assert q.fd_halves(a, ref)[1] > 4 * spread  # halves that ignore the classes are as wrong as the bootstrap


def test_half_indices_keep_class_proportions():
    rng = np.random.default_rng(0)
    labels = np.arange(25) % 10  # classes 0-4 three times, 5-9 twice
    for _ in range(20):
        h = q.half_indices(25, rng, labels)
        assert len(h) == 12 and len(set(h.tolist())) == 12
        counts = np.bincount(labels[h], minlength=10)
        assert all(c in (1, 2) for c in counts[:5]) and all(c == 1 for c in counts[5:])
    assert sorted(q.half_indices(7, rng).tolist()) != list(range(7)) and len(q.half_indices(7, rng)) == 3


def test_train_classifier_on_given_digits_reports_accuracy_on_the_given_heldout():
    from ddpm.data.digits import load_all

    images, labels = load_all()
    rng = np.random.default_rng(0)
    drawn = q.stratified_draw(labels, [45] * 10, rng).reshape(10, 45)  # per class: 40 to train, 5 held out
    a, b = drawn[:, :40].ravel(), drawn[:, 40:].ravel()
    net, record = dc.train_classifier(epochs=6, data=(images[a], labels[a]), heldout=(images[b], labels[b]),
                                      log=lambda *_: None)
    assert record["train_images"] == 400 and len(record["loss_per_epoch"]) == 6
    assert record["loss_per_epoch"][-1] < record["loss_per_epoch"][0]
    assert record["heldout_accuracy"] == dc.accuracy(net, images[b], labels[b]) > 0.2  # chance is 0.1


def test_stratified_draw_takes_exact_class_counts():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    idx = q.stratified_draw(labels, [4, 0, 10], rng)
    assert np.bincount(labels[idx], minlength=3).tolist() == [4, 0, 10] and len(set(idx.tolist())) == 14
    assert q.has_counts(labels, [10, 0, 10]) and not q.has_counts(labels, [11, 0, 0])  # only 10 of class 0
    assert not q.has_counts(None, [1, 0, 0])
    with pytest.raises(ValueError, match="fewer items"):
        q.stratified_draw(labels, [11, 0, 0], rng)


def test_confusion_and_accuracy():
    m = q.confusion([0, 0, 1, 2], [0, 1, 1, 2], classes=3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


# ---------------------------------------------------------------------------------- classifier
@pytest.mark.parametrize("kind, record_file", [("features", "record.json"), ("recognizer", "recognizer_record.json")])
def test_shipped_networks_accuracy_and_record(kind, record_file):
    """Version 2 (default): trained on one half, accuracy on the other, the reference half; version 1
    (kept to reproduce old tables): trained on the 4,500 `train` digits, accuracy on the 500 `test` ones."""
    from ddpm.data.digits import load_all, load_digits

    record = json.loads((dc.asset_dir() / record_file).read_text())
    images, labels = load_all()
    _, ref = dc.instrument_split()
    acc = dc.accuracy(dc.load(kind), images[ref], labels[ref])
    assert acc == pytest.approx(record["heldout_accuracy"], abs=1e-9)  # the shipped number is reproducible
    assert acc >= 0.98
    assert (record["train_images"], record["heldout_images"], record["version"]) == (2500, 2500, 2)
    assert sum(p.numel() for p in dc.load(kind).parameters()) == record["parameters"]
    old = json.loads((dc.asset_dir(1) / record_file).read_text())
    assert dc.accuracy(dc.load(kind, version=1), *load_digits("test")) == pytest.approx(old["heldout_accuracy"], abs=1e-9)
    assert old["train_images"] == 4500


def test_instrument_split_is_fixed_disjoint_and_class_balanced():
    """The reference digits are exactly those the version-2 networks never saw, 250 of each class."""
    from ddpm.data.digits import load_all

    _, labels = load_all()
    train, ref = dc.instrument_split()
    assert len(set(train.tolist()) | set(ref.tolist())) == 5000 and not set(train.tolist()) & set(ref.tolist())
    assert np.bincount(labels[train]).tolist() == [250] * 10 == np.bincount(labels[ref]).tolist()
    assert np.array_equal(dc.instrument_split()[0], train)  # fixed: the same draw every time
    assert 100 < np.count_nonzero(ref < 2500) < 2400  # random, not a block of the file (MNIST order)
    feats, probs, ref_labels = q.reference()
    assert feats.shape == (2500, 128) and np.array_equal(ref_labels, labels[ref])
    assert q.reference(version=1)[0].shape == (5000, 128)
    with pytest.raises(ConfigError, match="version must be one of"):
        q.DigitsInstrument(28, version=3)
    with pytest.raises(ConfigError, match="n ≤ 1250"):
        q.real_floor(1300)


def test_the_recognizer_reads_speckled_digits_the_features_see_the_speckle():
    """Why two networks: light pixel noise must not change the recognised class, but must move FD."""
    from ddpm.data.digits import load_digits

    images, labels = load_digits("test")
    clean = dc.to_input(images)
    speckled = (clean + 0.25 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    recognizer, features = dc.load("recognizer"), dc.load("features")
    assert dc.accuracy(recognizer, speckled, labels) > 0.97
    assert dc.accuracy(features, speckled, labels) < dc.accuracy(recognizer, speckled, labels) - 0.05
    a, b = dc.predict(None, clean)[0], dc.predict(None, speckled)[0]
    assert q.fd(b, a) > 20 * q.fd(a[::2], a[1::2])  # (the test digits are sorted by class)


def test_classifier_refuses_other_shapes():
    with pytest.raises(ConfigError, match="28×28 grey"):
        dc.to_input(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="8–28 pixels"):
        q.DigitsInstrument(32)


def test_floor_with_the_samples_class_counts_is_lower_and_tighter():
    """A perfect class-conditional generator gives exactly the requested class counts; real subsets drawn
    that way sit far below subsets with random class proportions, with a much smaller spread."""
    random = q.real_floor(200, draws=5)
    balanced = q.real_floor(200, draws=5, class_counts=[20] * 10)
    assert balanced["stratified"] and not random["stratified"]
    assert balanced["fd"][0] < 0.6 * random["fd"][0] and balanced["fd"][1] < 0.5 * random["fd"][1]
    assert balanced["accuracy"][0] > 0.98
    assert balanced["is_mean"][0] > 5  # 7 with 10 equal classes; a draw sorted by class gave 1 (IS splits)
    with pytest.raises(ConfigError, match="add up to"):
        q.real_floor(200, class_counts=[10] * 10)


def test_real_floor_is_below_degraded_real_digits():
    from ddpm.data.digits import load_all

    n = 200
    floor = q.real_floor(n, draws=3)
    images, labels = load_all()
    rng = np.random.default_rng(0)
    idx = rng.choice(len(images), n, replace=False)
    noisy = np.clip(images[idx].astype(np.float64) + rng.normal(0, 60, (n, 28, 28)), 0, 255).astype(np.uint8)
    blurred = ((images[idx].astype(np.float64) + np.roll(images[idx], 2, 1) + np.roll(images[idx], 2, 2)) / 3
               ).astype(np.uint8)
    for degraded in (noisy, blurred):
        r = q.score_images(degraded, labels[idx])
        assert r.fd > floor["fd"][0] + 3 * floor["fd"][1] + 3 * r.fd_std
        assert r.kid > floor["kid"][0] + 3 * floor["kid"][1]
    assert floor["accuracy"][0] > 0.98 and floor["precision"][0] > 0.6 and floor["recall"][0] > 0.6


def test_score_needs_enough_images():
    with pytest.raises(ConfigError, match="at least 10"):
        q.score_features(np.zeros((5, 128)), np.full((5, 10), 0.1))


def test_parse_samplers():
    assert parse_samplers("ddpm,ddim:eta=0,ddim:eta=0.5") == [("ddpm", {}), ("ddim", {"eta": 0}),
                                                              ("ddim", {"eta": 0.5})]
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_samplers("ddim:eta")


# ------------------------------------------------------------------------------------------ CLI
ASSET = "src/ddpm/assets/digits"



def test_eval_quality_on_the_shipped_checkpoint(tmp_path, capsys):
    out = tmp_path / "q.json"
    assert main(["eval", "quality", "--ckpt", ASSET, "-n", "20", "--sampler", "ddim", "--steps", "2",
                 "--json", str(out), "--no-progress"]) == 0
    row = json.loads(out.read_text())
    for key in ("fd", "fd_std", "kid", "kid_std", "precision", "recall", "accuracy", "confusion", "n", "nfe",
                "seconds", "seconds_per_image", "floor"):
        assert key in row, key
    assert row["n"] == 20 and row["nfe"] == 2 and row["sampler"] == "ddim"
    assert np.array(row["confusion"]).sum() == 20
    # two deterministic steps from pure noise leave blurred class means, far from real digits
    assert row["fd"] > 5 * row["floor"]["fd"][0]
    printed = capsys.readouterr().out
    assert "FD" in printed and "floor" in printed and "digits v2" in printed


def test_eval_quality_scores_the_same_images_with_either_instrument_version(tmp_path):
    """`--features digits-v1` reproduces tables measured with version 1: same images, its own networks and
    reference (all 5,000 digits), recorded under the name its rows had."""
    rows = {}
    for features in ("digits", "digits-v1"):
        out = tmp_path / f"{features}.json"
        assert main(["eval", "quality", "--ckpt", ASSET, "-n", "20", "--sampler", "ddim", "--steps", "2",
                     "--features", features, "--json", str(out), "--no-progress"]) == 0
        rows[features] = json.loads(out.read_text())
    v1, v2 = rows["digits-v1"], rows["digits"]
    assert (v1["features"], v2["features"]) == ("digits", "digits v2")
    feats_v1, _ = q.DigitsInstrument(28, version=1).predict(np.zeros((2, 28, 28), np.uint8))
    feats_v2, _ = q.DigitsInstrument(28).predict(np.zeros((2, 28, 28), np.uint8))
    assert not np.allclose(feats_v1, feats_v2)  # two different networks
    assert v1["fd"] != v2["fd"] and v1["floor"]["fd"][0] < v2["floor"]["fd"][0]  # v1's floor: digits it learnt


def test_eval_sweep_resumes_and_plots(tmp_path, capsys):
    out, png, md = tmp_path / "s.json", tmp_path / "s.png", tmp_path / "s.md"
    argv = ["eval", "sweep", "--ckpt", ASSET, "-n", "12", "--samplers", "ddim:eta=0,ddim:eta=1",
            "--steps", "2,3", "--json", str(out), "--plot", str(png), "--markdown", str(md), "--no-progress"]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["options"]["eta"], r["steps"]) for r in rows) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert png.stat().st_size > 0
    table = md.read_text().splitlines()
    assert len(table) == 2 + 4 + 1 + 2 and table[6].startswith("| real vs real (floor), n = 12, class counts")
    assert f"| 1* | {rows[0]['fd']:.2f} ± {rows[0]['fd_std']:.2f} |" in table[2]
    first = [r["fd"] for r in rows]
    capsys.readouterr()
    assert main(argv) == 0  # a second run re-uses every row
    assert capsys.readouterr().out.count("done before, kept") == 4
    assert [r["fd"] for r in json.loads(out.read_text())["rows"]] == first
    # the same file with other weights must not pass the old rows off as this model's
    from ddpm.checkpoint import export_weights
    from ddpm.evaluate.sweep import weights_fingerprint
    from ddpm.checkpoint import load_checkpoint

    copy = export_weights(ASSET, tmp_path / "copy")  # same weights, another folder: resumes
    assert weights_fingerprint(load_checkpoint(copy).model) == rows[0]["weights_sha256"]
    assert main([*argv[:3], str(copy), *argv[4:]]) == 0
    other = _tiny_checkpoint(tmp_path / "other")
    before = out.read_bytes()
    assert exit_code([*argv[:3], str(other), *argv[4:]]) == 2
    assert "holds measurements of another model" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_aggregate_seeds_merges_independent_sets():
    from ddpm.evaluate.sweep import aggregate_seeds

    def row(seed, fd, steps=10):
        return {"sampler": "ddim", "steps": steps, "options": {}, "n": 500, "seed": seed, "fd": fd, "fd_std": 0.1,
                "kid": 0.0, "kid_std": 0.01, "precision": 0.7, "precision_std": 0.02, "recall": 0.8,
                "recall_std": 0.02, "accuracy": None, "seconds_per_image": seed + 1.0}

    merged = aggregate_seeds([row(0, 1.0), row(0, 2.0, steps=50), row(1, 1.2), row(2, 1.4), row(1, 2.2, steps=50)])
    assert [(m["steps"], m["sets"], m["seeds"]) for m in merged] == [(10, 3, [0, 1, 2]), (50, 2, [0, 1])]
    assert merged[0]["fd"] == pytest.approx(1.2) and merged[0]["fd_std"] == pytest.approx(0.2)
    assert merged[0]["fd_std_kind"] == "sets" and merged[0]["seconds_per_image"] == pytest.approx(2.0)
    # two sets cannot estimate a spread: the within-set ± stays
    assert merged[1]["fd"] == pytest.approx(2.1) and merged[1]["fd_std"] == pytest.approx(0.1)
    assert merged[1]["fd_std_kind"] == "halves" and "accuracy_std" not in merged[1]


def test_plot_series_draws_one_set_per_curve_and_the_means_apart(tmp_path):
    from ddpm.evaluate.sweep import plot_series, plot_sweep

    def row(seed, fd, steps, sampler="ddim"):
        return {"sampler": sampler, "steps": steps, "options": {"eta": 0.0} if sampler == "ddim" else {}, "guidance": 0.0, "n": 500, "seed": seed,
                "fd": fd, "fd_std": 0.1, "kid": 0.0, "kid_std": 0.01, "precision": 0.7, "precision_std": 0.02,
                "recall": 0.8, "recall_std": 0.02, "accuracy": None, "nfe": steps, "seconds_per_image": 0.01 * steps}

    rows = [row(0, 0.84, 10), row(1, 0.93, 10), row(2, 0.90, 10), row(0, 0.76, 20), row(0, 0.77, 50),
            row(1, 0.90, 50), row(2, 0.80, 50), row(1, 5.0, 4, "ddpm"), row(2, 6.0, 8, "ddpm")]
    series = plot_series(rows)
    line, means = series["ddim eta=0"]
    # the curve is seed 0 at every point (the seed all its points share), not a mix of means and one set
    assert [(r["steps"], r["fd"]) for r in line] == [(10, 0.84), (20, 0.76), (50, 0.77)]
    assert [(m["steps"], m["sets"]) for m in means] == [(10, 3), (50, 3)]
    assert means[0]["fd"] == pytest.approx((0.84 + 0.93 + 0.90) / 3)
    # no seed common to every point: the merged points, nothing drawn apart
    line, means = series["ddpm"]
    assert [(r["steps"], r["fd"]) for r in line] == [(4, 5.0), (8, 6.0)] and means == []
    out = plot_sweep(rows, tmp_path / "p.png", floor={"fd": (0.4, 0.06)})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_rescores_kept_samples_without_sampling(tmp_path, monkeypatch):
    out, kept = tmp_path / "s.json", tmp_path / "samples"
    argv = ["eval", "sweep", "--ckpt", ASSET, "-n", "20", "--samplers", "ddim", "--steps", "3", "--seed", "4",
            "--json", str(out), "--samples", str(kept), "--no-progress"]
    assert main(argv) == 0
    first = json.loads(out.read_text())["rows"][0]
    files = list(kept.glob("*.npz"))
    assert len(files) == 1
    images = np.load(files[0])["images"]
    assert images.dtype == np.uint8 and images.shape == (20, 28, 28, 1)
    out.unlink()

    def no_sampling(*a, **k):
        raise AssertionError("sampled although the images were kept")

    monkeypatch.setattr("ddpm.sampling.api.generate", no_sampling)
    assert main(argv) == 0
    again = json.loads(out.read_text())["rows"][0]
    for k in ("fd", "fd_std", "kid", "precision", "recall", "accuracy"):  # the feature net's float sums may vary
        assert again[k] == pytest.approx(first[k], rel=1e-5, abs=1e-9), k
    for k in ("seconds", "nfe", "nfe_measured", "threads"):  # the kept sampling record, as it was
        assert again[k] == first[k], k
    (tmp_path / "file").write_text("x")
    assert exit_code([*argv[:-3], "--samples", str(tmp_path / "file"), "--no-progress"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--sampler", "nope"], "invalid choice"),
    (["-n", "5"], "at least 10"),
    (["--class", "12"], "0..9"),
])
def test_eval_quality_errors_are_one_line(argv, message, capsys):
    assert exit_code(["eval", "quality", "--ckpt", ASSET, "--steps", "2", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err


def _tiny_checkpoint(path, *overrides):
    from ddpm.checkpoint import save_checkpoint
    from ddpm.config import apply_overrides
    from ddpm.models.registry import build_model
    from ddpm.presets import get_preset

    cfg = apply_overrides(get_preset("digits-tiny"), list(overrides))
    save_checkpoint(path, config=cfg, step=0, ema_state=build_model(cfg.model).state_dict())
    return path


def test_eval_quality_refuses_models_that_do_not_make_digits(tmp_path, capsys):
    ck = _tiny_checkpoint(tmp_path / "ck", "data.channels=3", "data.resolution=32")  # RGB: not digits
    assert exit_code(["eval", "quality", "--ckpt", str(ck), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "grey square digits of 8–28 pixels" in err and "3 channel" in err


def test_smaller_digits_are_scored_against_real_digits_at_their_resolution():
    """16×16 digits (the repro-tiny scale) are upsampled to 28 for the classifier; the reference goes
    through the same shrink-and-upsample, so real 16×16 digits sit at the floor and noise does not."""
    from ddpm.data.digits import load_all
    from ddpm.data.transforms import fit_array

    inst = q.DigitsInstrument(16)
    feats, probs, labels = inst.reference()
    assert feats.shape == (2500, 128)
    assert (probs.argmax(1) == labels).mean() > 0.95  # 16×16 digits are still legible to the classifier
    floor = q.floor_of(inst, 200, draws=3)
    images, labels = load_all()
    idx = np.random.default_rng(0).choice(len(images), 200, replace=False)  # the file is sorted by class
    small = fit_array(images[idx], 16, 1).float().div(127.5).sub(1)
    real = q.score_images(small, labels[idx], instrument=inst)
    noise = q.score_images(torch.rand(200, 1, 16, 16) * 2 - 1, labels[idx], instrument=inst)
    assert real.fd < floor["fd"][0] + 4 * floor["fd"][1] + 3 * real.fd_std
    assert noise.fd > 10 * real.fd and noise.accuracy < 0.3 < 0.9 < real.accuracy
    with pytest.raises(ConfigError, match="16×16"):
        inst.check((1, 28, 28))


def test_eval_quality_on_smaller_digits_and_with_inception_features(tmp_path, capsys):
    ck = _tiny_checkpoint(tmp_path / "ck", "data.resolution=16")
    out = tmp_path / "q.json"
    assert main(["eval", "quality", "--ckpt", str(ck), "-n", "12", "--steps", "2", "--json", str(out),
                 "--no-progress"]) == 0
    row = json.loads(out.read_text())
    assert row["features"] == "digits v2 (at 16×16, upsampled)" and row["n"] == 12
    # The FID network's features (random weights here: a pipeline check), against real digits.
    assert main(["eval", "quality", "--ckpt", str(ck), "-n", "10", "--steps", "2", "--features", "inception",
                 "--inception", "random", "--ref", "digits", "--ref-num", "20", "--json", str(out), "--overwrite",
                 "--no-progress"]) == 0
    row = json.loads(out.read_text())
    assert row["features"].startswith("inception vs digits/train (RANDOM")
    assert row["accuracy"] is None  # Inception's classes are not the digits
    assert set(row["floor"]) == {"fd", "kid", "precision", "recall", "is_mean", "stratified", "draws"}
    assert not row["floor"]["stratified"]  # no classes to match
    assert "RANDOM Inception" in capsys.readouterr().out


def test_reference_features_are_cached_under_a_content_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    compute = q._digits_reference.__wrapped__  # past the in-process cache
    feats, probs, labels = compute(28)
    files = list(tmp_path.glob("digits_reference_*.npz"))
    assert len(files) == 1
    again = compute(28)  # read back from the file
    assert np.array_equal(again[0], feats) and np.array_equal(again[1], probs)
    files[0].write_bytes(b"damaged")  # a broken cache file is recomputed, not trusted
    assert np.array_equal(compute(28)[0], feats)
