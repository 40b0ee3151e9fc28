"""Diffusers-layout DDPM weights: config mapping, state-dict conversion, folders, output parity."""

import dataclasses
import json

import pytest
import torch

from ddpm.config import DiffusionConfig
from ddpm.errors import CheckpointError, ConfigError
from ddpm.models.convert_diffusers import (
    convert_diffusers_state_dict,
    diffusers_kwargs_for,
    diffusion_config_from_scheduler,
    load_diffusers_folder,
    save_diffusers_folder,
    scheduler_config_for,
    to_diffusers_state_dict,
    unet_config_from_diffusers,
)
from ddpm.presets import get_network
from ddpm.models.unet import UNet, count_parameters

# The UNet2DModel configs published with the paper's weights (google/ddpm-cifar10-32 and the
# 256x256 ones: -celebahq-256, -church-256, -bedroom-256, -cat-256 share one architecture).
HUB_COMMON = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None, "center_input_sample": False,
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3,
    "time_embedding_type": "positional",
}
HUB_CIFAR10 = {
    **HUB_COMMON, "sample_size": 32, "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
HUB_256 = {
    **HUB_COMMON, "sample_size": 256, "block_out_channels": [128, 128, 256, 256, 512, 512],
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
}
HUB_SCHEDULER = {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
                 "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_small"}
# Both layouts at reduced size for fast CPU tests: same block types, depth and res blocks per level;
# widths 32/64 instead of 128..512; the 256 layout at sample_size 32 (attention at 2x2, not 16x16).
REDUCED_CIFAR10 = {**HUB_CIFAR10, "block_out_channels": [32, 64, 64, 64]}
REDUCED_256 = {**HUB_256, "sample_size": 32, "block_out_channels": [32, 32, 64, 64, 64, 64]}


def test_hub_configs_are_the_paper_networks():
    cifar = unet_config_from_diffusers(HUB_CIFAR10)
    assert cifar == get_network("cifar10", dropout=0.0)
    big = unet_config_from_diffusers(HUB_256)
    assert big == get_network("celebahq256")
    with torch.device("meta"):
        assert count_parameters(UNet(cifar)) == 35_746_307
        assert count_parameters(UNet(big)) == 113_673_219


def test_kwargs_round_trip_for_every_preset():
    for name in ("cifar10", "celebahq256", "tiny", "small", "digits"):
        cfg = get_network(name)
        assert unet_config_from_diffusers(diffusers_kwargs_for(cfg)) == cfg, name
    cond = get_network("tiny", num_classes=10)
    assert diffusers_kwargs_for(cond)["num_class_embeds"] == 11
    assert unet_config_from_diffusers(diffusers_kwargs_for(cond)) == cond
    with pytest.raises(ConfigError, match="ch_mult"):
        diffusers_kwargs_for(get_network("tiny", ch_mult=(2, 2)))


@pytest.mark.parametrize("change, match", [
    ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
    ({"downsample_padding": 2}, "downsample_padding"),
    ({"attention_head_dim": 48}, "does not divide"),
    ({"attention_head_dim": [8, 8, 8, 8]}, "one head size"),
    ({"time_embedding_type": "fourier"}, "time_embedding_type"),
    ({"up_block_types": ["UpBlock2D"] * 4}, "only one side"),
    ({"down_block_types": ["CrossAttnDownBlock2D"] + HUB_CIFAR10["down_block_types"][1:]}, "not part"),
    ({"_class_name": "UNet2DConditionModel"}, "UNet2DModel"),
])
def test_unsupported_configs_are_config_errors(change, match):
    with pytest.raises(ConfigError, match=match):
        unet_config_from_diffusers({**HUB_CIFAR10, **change})


def test_diffusers_conventions_become_unet_fields():
    """flip_sin_to_cos, freq_shift, norm_eps, downsample_padding and attention_head_dim map to the
    UNetConfig fields of the same names; a config that leaves them out means diffusers' defaults."""
    cfg = unet_config_from_diffusers({**HUB_CIFAR10, "flip_sin_to_cos": True, "freq_shift": 0, "norm_eps": 1e-5,
                                      "downsample_padding": 1, "attention_head_dim": 64})
    assert (cfg.flip_sin_to_cos, cfg.freq_shift, cfg.norm_eps, cfg.downsample_padding, cfg.attention_head_dim) == (
        True, 0, 1e-5, 1, 64)
    assert unet_config_from_diffusers(diffusers_kwargs_for(cfg)) == cfg
    minimal = {k: v for k, v in HUB_CIFAR10.items() if k not in (
        "flip_sin_to_cos", "freq_shift", "norm_eps", "downsample_padding", "attention_head_dim")}
    d = unet_config_from_diffusers(minimal)
    assert (d.flip_sin_to_cos, d.freq_shift, d.norm_eps, d.downsample_padding, d.attention_head_dim) == (
        True, 0, 1e-5, 1, 8)
    paper = unet_config_from_diffusers(HUB_CIFAR10)
    assert paper == get_network("cifar10", dropout=0.0)  # the defaults are the paper's: unchanged fields
    assert "diffusers conventions" not in paper.describe() and "flip_sin_to_cos True" in cfg.describe()


def test_scheduler_mapping():
    d = diffusion_config_from_scheduler(HUB_SCHEDULER)
    assert d == DiffusionConfig(var_type="fixedsmall")  # linear 1e-4 -> 0.02, T=1000, eps, mse
    assert diffusion_config_from_scheduler({**HUB_SCHEDULER, "variance_type": "fixed_large"}).var_type == "fixedlarge"
    learned = diffusion_config_from_scheduler({**HUB_SCHEDULER, "variance_type": "learned_range",
                                               "beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 4000})
    assert (learned.var_type, learned.schedule, learned.num_timesteps, learned.loss_type) == (
        "learned_range", "cosine", 4000, "hybrid")
    assert diffusion_config_from_scheduler(scheduler_config_for(d)) == d
    v = diffusion_config_from_scheduler({**HUB_SCHEDULER, "prediction_type": "v_prediction"})
    assert v.mean_type == "v" and diffusion_config_from_scheduler(scheduler_config_for(v)) == v
    with pytest.raises(ConfigError, match="prediction_type"):
        diffusion_config_from_scheduler({**HUB_SCHEDULER, "prediction_type": "velocity"})
    with pytest.raises(ConfigError, match="trained_betas"):
        diffusion_config_from_scheduler({**HUB_SCHEDULER, "trained_betas": [0.1] * 10})


def _random(model: UNet, seed: int = 0) -> UNet:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def test_state_dict_round_trip_and_legacy_names():
    cfg = get_network("tiny", num_classes=3)
    src = _random(UNet(cfg))
    theirs = to_diffusers_state_dict(src)
    assert "up_blocks.0.attentions.1.to_out.0.weight" in theirs  # our up[1] is their first up block
    assert theirs["mid_block.attentions.0.to_q.weight"].shape == (64, 64)  # Linear, not 1x1 conv
    back = convert_diffusers_state_dict(theirs, cfg)
    assert all(torch.equal(back[k], v) for k, v in src.state_dict().items())
    # Files written by older diffusers name the attention layers query/key/value/proj_attn.
    legacy = {k.replace("to_q.", "query.").replace("to_k.", "key.").replace("to_v.", "value.")
              .replace("to_out.0.", "proj_attn."): v for k, v in theirs.items()}
    back = convert_diffusers_state_dict(legacy, cfg)
    assert torch.equal(back["mid.attn_1.proj_out.weight"], src.mid.attn_1.proj_out.weight)
    with pytest.raises(CheckpointError, match="1 missing"):
        convert_diffusers_state_dict({k: v for k, v in theirs.items() if not k.startswith("conv_out.w")}, cfg)
    with pytest.raises(CheckpointError, match="shape"):
        convert_diffusers_state_dict(theirs, get_network("tiny", num_classes=3, out_channels=3))


@pytest.mark.parametrize("layout", ["pipeline", "flat-bin"])
def test_folder_layouts_without_diffusers(tmp_path, layout):
    cfg = get_network("tiny")
    src = _random(UNet(cfg))
    diffusion = DiffusionConfig(var_type="fixedlarge")
    if layout == "pipeline":
        save_diffusers_folder(src, diffusion, tmp_path)
    else:  # google/ddpm-cifar10-32 style: everything at the top level, weights as a .bin
        (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", **diffusers_kwargs_for(cfg)}))
        torch.save(to_diffusers_state_dict(src), tmp_path / "diffusion_pytorch_model.bin")
        (tmp_path / "scheduler_config.json").write_text(json.dumps(scheduler_config_for(diffusion)))
    model, dcfg = load_diffusers_folder(tmp_path)
    assert dcfg == diffusion and model.config == cfg and not model.training
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([123])
    with torch.no_grad():
        assert torch.equal(model(x, t), src(x, t))


def test_folder_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_diffusers_folder(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="config.json"):
        load_diffusers_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(HUB_CIFAR10))
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model"):
        load_diffusers_folder(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_diffusers_folder(tmp_path)


# ----------------------------------------------------------------- against diffusers itself


def _parity(hub_config: dict, class_labels=None, seed: int = 0) -> float:
    diffusers = pytest.importorskip("diffusers")
    kwargs = {k: v for k, v in hub_config.items() if not k.startswith("_")}
    torch.manual_seed(seed)
    theirs = diffusers.UNet2DModel(**kwargs).eval()  # diffusers' own (non-zero) random init
    cfg = unet_config_from_diffusers(dict(theirs.config))
    with torch.device("meta"):
        ours = UNet(cfg)
    ours.load_state_dict(convert_diffusers_state_dict(theirs.state_dict(), cfg), assign=True)
    ours.eval()
    n = cfg.resolution
    x = torch.randn(len(class_labels) if class_labels is not None else 1, cfg.in_channels, n, n,
                    generator=torch.Generator().manual_seed(seed))
    t = torch.tensor([7, 901][: len(x)])
    with torch.no_grad():
        ref = theirs(x, t, class_labels=class_labels).sample
        out = ours(x, t, class_labels)
    assert ref.abs().max() > 0.1  # a real signal, not near-zero outputs
    return (out - ref).abs().max().item()


def test_cifar10_layout_matches_diffusers():
    assert _parity(REDUCED_CIFAR10) <= 1e-5


@pytest.mark.slow
def test_full_size_cifar10_matches_diffusers():
    assert _parity(HUB_CIFAR10) <= 1e-5


def test_reduced_256_layout_matches_diffusers():
    assert _parity(REDUCED_256) <= 1e-5


def test_diffusers_default_unet2dmodel_matches_diffusers():
    """A UNet2DModel built with diffusers' own defaults for every option (cos-first embedding,
    freq_shift 0, eps 1e-5, symmetric downsampling, 8-channel attention heads), at reduced width."""
    pytest.importorskip("diffusers")
    cfg = {"_class_name": "UNet2DModel", "sample_size": 16, "block_out_channels": [32, 64], "layers_per_block": 1,
           "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
    assert _parity(cfg, class_labels=None) <= 1e-5
    three = {**cfg, "block_out_channels": [32, 32, 64], "down_block_types": ["DownBlock2D", "AttnDownBlock2D",
             "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "num_class_embeds": 4}
    assert _parity(three, class_labels=torch.tensor([0, 3])) <= 1e-5


@pytest.mark.slow
def test_full_size_diffusers_default_unet2dmodel_matches_diffusers():
    """UNet2DModel() exactly as diffusers builds it by default (sample_size 32 given: it has none)."""
    assert _parity({"_class_name": "UNet2DModel", "sample_size": 32}) <= 1e-5


def test_class_conditional_matches_diffusers():
    cfg = {**REDUCED_256, "sample_size": 16, "block_out_channels": [32, 64], "layers_per_block": 1,
           "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
           "num_class_embeds": 5}
    assert _parity(cfg, class_labels=torch.tensor([0, 4])) <= 1e-5


def test_saved_folder_loads_in_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    cfg = dataclasses.replace(get_network("tiny"), out_channels=3)
    src = _random(UNet(cfg))
    save_diffusers_folder(src, DiffusionConfig(), tmp_path)
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path / "unet").eval()
    sched = diffusers.DDPMScheduler.from_pretrained(tmp_path / "scheduler")
    assert sched.config.variance_type == "fixed_large" and sched.config.num_train_timesteps == 1000
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 999])
    with torch.no_grad():
        assert (theirs(x, t).sample - src(x, t)).abs().max() <= 1e-5


def test_cli_diffusers_import_and_export(tmp_path, capsys):
    from ddpm.cli import main
    from ddpm.checkpoint import load_checkpoint

    cfg = get_network("tiny")  # 6 output channels: a learned variance
    src = _random(UNet(cfg))
    learned = DiffusionConfig(var_type="learned_range", loss_type="hybrid")
    save_diffusers_folder(src, learned, tmp_path / "hub")
    # load_checkpoint reads a diffusers folder directly ...
    direct = load_checkpoint(tmp_path / "hub")
    assert direct.config.model == cfg and direct.config.diffusion.var_type == "learned_range"
    # ... and `ddpm convert diffusers` turns it into a ddpm checkpoint.
    assert main(["convert", "diffusers", str(tmp_path / "hub"), str(tmp_path / "ckpt")]) == 0
    assert "703,366 parameters" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.weights == "ema" and ckpt.config.diffusion == learned
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([42])
    with torch.no_grad():
        assert torch.equal(ckpt.model(x, t), src(x, t))
    assert main(["convert", "to-diffusers", str(tmp_path / "ckpt"), str(tmp_path / "back")]) == 0
    model, dcfg = load_diffusers_folder(tmp_path / "back")
    assert dcfg.var_type == "learned_range" and torch.equal(model.conv_out.weight, src.conv_out.weight)


def test_exported_folder_is_a_ddpm_pipeline_that_diffusers_runs(tmp_path):
    """`DDPMPipeline.from_pretrained(exported)` works and its first denoising step matches ours."""
    diffusers = pytest.importorskip("diffusers")
    cfg = dataclasses.replace(get_network("tiny"), out_channels=3)
    src = _random(UNet(cfg))
    save_diffusers_folder(src, DiffusionConfig(num_timesteps=10), tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    out = pipe(batch_size=1, num_inference_steps=10, output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 16, 16, 3)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 9])
    with torch.no_grad():
        assert (pipe.unet(x, t).sample - src(x, t)).abs().max() <= 1e-5


def _hub_cache(tmp_path, model, diffusion, repo="acme/ddpm-tiny", revision="main"):
    """A Hub cache laid out as huggingface_hub lays it out (refs/<revision> -> snapshots/<commit>/...)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = tmp_path / "hub-cache" / ("models--" + repo.replace("/", "--"))
    save_diffusers_folder(model, diffusion, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / revision).write_text(commit)
    return tmp_path / "hub-cache"


def test_hub_ids_load_from_the_hub_cache_offline(tmp_path, monkeypatch, capsys):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants

    from ddpm.checkpoint import load_checkpoint
    from ddpm.cli import main

    cfg = dataclasses.replace(get_network("tiny"), out_channels=3)
    src = _random(UNet(cfg))
    cache = _hub_cache(tmp_path, src, DiffusionConfig(num_timesteps=10))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # "acme/ddpm-tiny" is not a local path here
    loaded = load_checkpoint("acme/ddpm-tiny")
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([3])
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t), src(x, t))
    assert loaded.diffusion.num_timesteps == 10
    assert main(["sample", "--ckpt", "acme/ddpm-tiny@main", "-n", "2", "--steps", "2", "--npz", "s.npz"]) == 0
    capsys.readouterr()
    assert main(["sample", "--ckpt", "acme/not-cached", "-n", "1", "--npz", "t.npz"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in the Hub cache" in err


def test_push_to_hub_uploads_the_exported_folder(tmp_path, monkeypatch, capsys):
    """--push-to-hub creates the repository and uploads OUT through huggingface_hub.HfApi (patched:
    the test never reaches the network); a failing upload is one line and the local folder stays."""
    hf = pytest.importorskip("huggingface_hub")
    from ddpm.cli import main

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw["private"], kw["exist_ok"]))

        def upload_folder(self, *, folder_path, repo_id, **kw):
            from pathlib import Path

            calls.append(("upload", repo_id, sorted(str(p.relative_to(folder_path))
                                                    for p in Path(folder_path).rglob("*") if p.is_file())))

    monkeypatch.setattr(hf, "HfApi", FakeApi)
    out = tmp_path / "export"
    assert main(["convert", "to-diffusers", "src/ddpm/assets/digits", str(out), "--push-to-hub", "acme/digits",
                 "--private"]) == 0
    assert "https://huggingface.co/acme/digits" in capsys.readouterr().out
    assert calls == [("create", "acme/digits", True, True),
                     ("upload", "acme/digits", ["model_index.json", "scheduler/scheduler_config.json",
                                                "unet/config.json", "unet/diffusion_pytorch_model.safetensors"])]

    class OfflineApi(FakeApi):
        def create_repo(self, repo_id, **kw):
            raise OSError("Network is unreachable")

    monkeypatch.setattr(hf, "HfApi", OfflineApi)
    assert main(["convert", "to-diffusers", "src/ddpm/assets/digits", str(tmp_path / "e2"), "--push-to-hub",
                 "acme/digits"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not upload" in err and "Network is unreachable" in err
    assert (tmp_path / "e2" / "model_index.json").is_file()  # written locally all the same


def test_info_on_imported_weights_shows_no_recipe(tmp_path, capsys):
    """`ddpm info` on a diffusers folder or a converted checkpoint prints no training recipe or dataset."""
    from ddpm.cli import main

    cfg = dataclasses.replace(get_network("tiny"), out_channels=3)
    save_diffusers_folder(_random(UNet(cfg)), DiffusionConfig(), tmp_path / "hub")
    for path in (tmp_path / "hub", tmp_path / "ckpt"):
        if path.name == "ckpt":
            assert main(["convert", "diffusers", str(tmp_path / "hub"), str(path)]) == 0
            capsys.readouterr()
        assert main(["info", str(path)]) == 0
        out = capsys.readouterr().out
        assert "imported:" in out and "no training recipe or dataset" in out
        assert "training:" not in out and "data:" not in out and "cifar10" not in out
        assert main(["info", "--json", str(path)]) == 0
        d = json.loads(capsys.readouterr().out)
        assert "train" not in d and "source" not in d["data"]


def test_hf_hub_offline_environment_in_a_real_process(tmp_path):
    """HF_HUB_OFFLINE=1 set in the environment (read by huggingface_hub at import): a populated cache
    works, an empty one gives one line — in a fresh interpreter, as a user runs it."""
    import os
    import subprocess
    import sys

    pytest.importorskip("huggingface_hub")
    cfg = dataclasses.replace(get_network("tiny"), out_channels=3)
    cache = _hub_cache(tmp_path, _random(UNet(cfg)), DiffusionConfig(num_timesteps=4))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    argv = [sys.executable, "-m", "ddpm", "sample", "--steps", "2", "-n", "1", "--threads", "1", "--no-progress"]
    ok = subprocess.run(argv + ["--ckpt", "acme/ddpm-tiny", "--npz", "a.npz"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "a.npz").is_file()
    missing = subprocess.run(argv + ["--ckpt", "acme/other", "--npz", "b.npz"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "not in the Hub cache" in missing.stderr
