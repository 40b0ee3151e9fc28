"""DiT (Peebles & Xie 2023): exact parameter counts of the official code, adaLN-Zero identity at
initialisation, the fixed embeddings against closed forms, and both importers against diffusers'
DiTTransformer2DModel on random weights."""

import argparse
import dataclasses
import math

import pytest
import torch

from ddpm.errors import CheckpointError, ConfigError
from ddpm.models.dit import DiT, DiTBlock, DiTConfig, sincos_pos_embed_2d, timestep_embedding
from ddpm.models.registry import count_parameters
from ddpm.presets import get_preset

# `sum(p.numel() for p in model.parameters())` of the official models.py (what its train.py logs as
# "DiT Parameters") for DiT_models[name](input_size=32, num_classes=1000): counted by running that file;
# the official count includes the frozen pos_embed Parameter (requires_grad=False), and so does ours.
OFFICIAL_COUNTS = {
    "dit-xl-2": 675_129_632, "dit-xl-4": 675_074_432, "dit-xl-8": 675_683_072,
    "dit-l-2": 458_102_816, "dit-l-4": 458_053_760, "dit-l-8": 458_594_816,
    "dit-b-2": 130_512_416, "dit-b-4": 130_475_648, "dit-b-8": 130_881_536,
    "dit-s-2": 32_963_360, "dit-s-4": 32_945_024, "dit-s-8": 33_148_160,
}


def tiny(**kw) -> DiTConfig:
    base = dict(in_channels=4, out_channels=8, resolution=8, patch_size=2, hidden_size=32, depth=2, num_heads=2,
                num_classes=10)
    return DiTConfig(**{**base, **kw})


def closed_form_count(d: int, depth: int, p: int, c_in: int = 4, c_out: int = 8, classes: int = 1000,
                      size: int = 32, freq: int = 256) -> int:
    """Parameters of the official DiT from its layer shapes (paper §3.2, official models.py)."""
    tokens = (size // p) ** 2
    block = (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d) + (6 * d * d + 6 * d)
    return ((c_in * p * p * d + d) + tokens * d + (freq * d + d + d * d + d) + (classes + 1) * d
            + depth * block + (2 * d * d + 2 * d) + (d * p * p * c_out + p * p * c_out))


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_preset_parameter_counts_are_the_official_code_s(name):
    cfg = get_preset(name)
    dit = cfg.model.backbone_config
    assert (dit.in_channels, dit.resolution, dit.out_channels, dit.num_classes) == (4, 32, 8, 1000)
    assert count_parameters(dit) == OFFICIAL_COUNTS[name]
    size, patch = name.split("-")[1:]
    d, depth, _ = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "xl": (1152, 28, 16)}[size]
    assert closed_form_count(d, depth, int(patch)) == OFFICIAL_COUNTS[name]
    paper = {"s": 33e6, "b": 130e6, "l": 458e6, "xl": 675e6}[size]  # Table 1 (the /2 models)
    assert abs(OFFICIAL_COUNTS[name] - paper) / paper < 0.01


def test_our_count_relates_to_diffusers_exactly():
    """diffusers keeps the embedder once per block and the position embedding as a non-persistent buffer."""
    diffusers = pytest.importorskip("diffusers")
    cfg = tiny(depth=3)
    with torch.device("meta"):
        theirs = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                                 out_channels=8, num_layers=3, sample_size=8, patch_size=2,
                                                 num_embeds_ada_norm=10)
        ours = DiT(cfg)
    n_theirs = sum(p.numel() for p in theirs.parameters())
    embedder = sum(p.numel() for p in ours.t_embedder.parameters()) + ours.y_embedder.embedding_table.weight.numel()
    assert count_parameters(cfg) == n_theirs - (cfg.depth - 1) * embedder + ours.pos_embed.numel()


def test_shapes_learned_sigma_and_labels():
    torch.manual_seed(0)
    net = DiT(tiny(resolution=12, patch_size=4, in_channels=3, out_channels=6))
    x, t = torch.randn(2, 3, 12, 12), torch.tensor([3, 900])
    assert net(x, t).shape == (2, 6, 12, 12)
    assert net(x, 5, torch.tensor([1, -1])).shape == (2, 6, 12, 12)  # int t; -1 = null label
    uncond = DiT(tiny(num_classes=None))
    assert uncond(torch.randn(1, 4, 8, 8), torch.tensor([1])).shape == (1, 8, 8, 8)
    with pytest.raises(ConfigError, match="unconditional"):
        uncond(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(ConfigError, match="does not divide"):
        DiT(tiny(resolution=10, patch_size=4))
    with pytest.raises(ConfigError, match="divisible by model.num_heads"):
        DiT(tiny(num_heads=3))
    # null label: y=None and a negative label are the same row, the last of the table
    net.eval()
    assert torch.equal(net(x, t, None), net(x, t, torch.tensor([-1, -1])))
    assert net.y_embedder.embedding_table.num_embeddings == 11


def test_with_data_derives_shape_classes_and_sigma():
    cfg = DiTConfig().with_data(channels=1, resolution=28, num_classes=10, learn_sigma=True)
    assert (cfg.in_channels, cfg.resolution, cfg.num_classes, cfg.out_channels) == (1, 28, 10, 2)


def test_a_fresh_block_is_the_identity_and_a_fresh_dit_outputs_zero():
    torch.manual_seed(0)
    block = DiTBlock(32, 2, 4.0)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if not name.startswith("adaLN_modulation"):
                p.normal_()  # anything: the zero gates must cancel it
    x, c = torch.randn(3, 5, 32), torch.randn(3, 32)
    assert torch.equal(block(x, c), x)
    net = DiT(tiny())
    h = torch.randn(2, 16, 32)
    for b in net.blocks:
        assert torch.equal(b(h, torch.randn(2, 32)), h)
    assert torch.count_nonzero(net(torch.randn(2, 4, 8, 8), torch.tensor([0, 999]), torch.tensor([1, 2]))) == 0
    for b in net.blocks:
        assert torch.count_nonzero(b.adaLN_modulation[1].weight) == 0
    # ... and the gradient still reaches the zero layers (adaLN-Zero trains)
    out = net(torch.randn(2, 4, 8, 8), torch.tensor([0, 999]))
    (out - 1).pow(2).sum().backward()
    assert net.final_layer.linear.bias.grad.abs().sum() > 0


def test_fixed_embeddings_closed_form():
    """Timestep: cos first, exp(-ln(1e4) j / half) (official) or /(half-1) (diffusers); position: MAE's
    2-D sine-cosine, columns in the first half."""
    t = torch.tensor([0.0, 7.0, 999.0])
    emb = timestep_embedding(t, 8)
    freqs = [math.exp(-math.log(1e4) * j / 4) for j in range(4)]
    want = torch.tensor([[math.cos(v * f) for f in freqs] + [math.sin(v * f) for f in freqs] for v in t.tolist()])
    torch.testing.assert_close(emb, want, rtol=0, atol=1e-4)  # float32 arguments up to 999 rad
    shifted = timestep_embedding(t, 8, freq_shift=1)
    freqs = [math.exp(-math.log(1e4) * j / 3) for j in range(4)]
    torch.testing.assert_close(shifted[:, :4], torch.cos(t[:, None] * torch.tensor(freqs)), rtol=0, atol=1e-4)
    pe = sincos_pos_embed_2d(8, 3)  # 9 tokens, row-major; dims: [sin(col ω), cos(col ω), sin(row ω), cos(row ω)]
    omega = [1.0, 1e-2]
    row, col = 1, 2
    want = [math.sin(col * w) for w in omega] + [math.cos(col * w) for w in omega] + \
        [math.sin(row * w) for w in omega] + [math.cos(row * w) for w in omega]
    torch.testing.assert_close(pe[row * 3 + col], torch.tensor(want), rtol=0, atol=1e-7)
    diffusers = pytest.importorskip("diffusers")
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    theirs = torch.as_tensor(get_2d_sincos_pos_embed(64, 4, base_size=4, output_type="pt")).float()
    torch.testing.assert_close(sincos_pos_embed_2d(64, 4), theirs, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------- importers
def _diffusers_dit(depth=2, norm_eps=1e-5, same_embedders=True):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    d = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                        num_layers=depth, sample_size=8, patch_size=2, num_embeds_ada_norm=10,
                                        norm_eps=norm_eps).eval()
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.1)
        if same_embedders:  # as diffusers' own DiT converter writes them
            for b in d.transformer_blocks[1:]:
                b.norm1.emb.load_state_dict(d.transformer_blocks[0].norm1.emb.state_dict())
    return d


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 4, 8, 8, generator=g), torch.tensor([0, 17, 999]), torch.tensor([0, 5, 10])


def official_state_dict_from_diffusers(d) -> dict:
    """The official facebookresearch/DiT names built from a diffusers model: the inverse of diffusers'
    scripts/convert_dit_to_diffusers.py, written out here independently of our importer."""
    sd, out = d.state_dict(), {}
    out["x_embedder.proj.weight"], out["x_embedder.proj.bias"] = sd["pos_embed.proj.weight"], sd["pos_embed.proj.bias"]
    emb = "transformer_blocks.0.norm1.emb."
    for leaf in ("weight", "bias"):
        out[f"t_embedder.mlp.0.{leaf}"] = sd[emb + f"timestep_embedder.linear_1.{leaf}"]
        out[f"t_embedder.mlp.2.{leaf}"] = sd[emb + f"timestep_embedder.linear_2.{leaf}"]
        out[f"final_layer.adaLN_modulation.1.{leaf}"] = sd[f"proj_out_1.{leaf}"]
        out[f"final_layer.linear.{leaf}"] = sd[f"proj_out_2.{leaf}"]
    out["y_embedder.embedding_table.weight"] = sd[emb + "class_embedder.embedding_table.weight"]
    for i in range(len(d.transformer_blocks)):
        b = f"transformer_blocks.{i}."
        for leaf in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat([sd[b + f"attn1.to_{n}.{leaf}"] for n in "qkv"])
            out[f"blocks.{i}.attn.proj.{leaf}"] = sd[b + f"attn1.to_out.0.{leaf}"]
            out[f"blocks.{i}.mlp.fc1.{leaf}"] = sd[b + f"ff.net.0.proj.{leaf}"]
            out[f"blocks.{i}.mlp.fc2.{leaf}"] = sd[b + f"ff.net.2.{leaf}"]
            out[f"blocks.{i}.adaLN_modulation.1.{leaf}"] = sd[b + f"norm1.linear.{leaf}"]
    out["pos_embed"] = d.pos_embed.pos_embed.clone()
    return out


def test_diffusers_folder_import_matches_diffusers(tmp_path):
    from ddpm.models.convert_diffusers import load_diffusers_folder

    d = _diffusers_dit()
    d.save_pretrained(tmp_path / "transformer")
    net, diffusion = load_diffusers_folder(tmp_path)
    assert net.config.timestep_freq_shift == 1 and net.config.mlp_norm_eps == 1e-5
    assert (diffusion.var_type, diffusion.loss_type) == ("learned_range", "hybrid")
    x, t, y = _inputs()
    with torch.no_grad():
        err = (net(x, t, y) - d(x, t, y).sample).abs().max().item()
    assert err <= 1e-5, err


def test_official_layout_import_matches_diffusers_in_the_official_variant(tmp_path):
    """diffusers computes the official DiT once its two variant constants are set to the official ones
    (timestep frequencies over half, ε 1e-6 before the MLP)."""
    from ddpm.models.convert_dit import convert_official_state_dict, dit_config_from_official, read_official_checkpoint

    d = _diffusers_dit(norm_eps=1e-6)
    for b in d.transformer_blocks:
        b.norm1.emb.time_proj.downscale_freq_shift = 0
    sd = official_state_dict_from_diffusers(d)
    torch.save(sd, tmp_path / "DiT-tiny.pt")
    # a training checkpoint: {"model", "ema", "opt", "args": argparse.Namespace}
    torch.save({"model": {k: v * 0 for k, v in sd.items()}, "ema": sd, "opt": {}, "args": argparse.Namespace(lr=1e-4)},
               tmp_path / "ckpt.pt")
    x, t, y = _inputs()
    for path in ("DiT-tiny.pt", "ckpt.pt"):
        loaded = read_official_checkpoint(tmp_path / path)
        cfg = dit_config_from_official(loaded, num_heads=2)
        assert cfg == tiny()
        net = DiT(cfg).eval()
        net.load_state_dict(convert_official_state_dict(loaded, cfg))
        with torch.no_grad():
            err = (net(x, t, y) - d(x, t, y).sample).abs().max().item()
        assert err <= 1e-5, (path, err)
    with pytest.raises(ConfigError, match="--num-heads"):
        dit_config_from_official(sd)  # width 32 is none of the paper's


def test_unequal_block_embedders_and_unsafe_pickles_are_refused(tmp_path):
    from ddpm.models.convert_dit import convert_diffusers_dit_state_dict, read_official_checkpoint

    d = _diffusers_dit(same_embedders=False)
    with pytest.raises(CheckpointError, match="copies of the timestep/label embedding differ"):
        convert_diffusers_dit_state_dict(d.state_dict(), dataclasses.replace(tiny(), timestep_freq_shift=1))

    torch.save({"ema": {"x_embedder.proj.weight": torch.zeros(1)}, "obj": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_official_checkpoint(tmp_path / "evil.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_cli_convert_dit_and_diffusers_then_info(tmp_path, capsys):
    from safetensors.torch import save_file

    from ddpm.checkpoint import load_checkpoint
    from ddpm.cli import main

    d = _diffusers_dit(norm_eps=1e-6)
    for b in d.transformer_blocks:
        b.norm1.emb.time_proj.downscale_freq_shift = 0
    save_file({k: v.contiguous() for k, v in official_state_dict_from_diffusers(d).items()}, tmp_path / "dit.safetensors")
    assert main(["convert", "dit", str(tmp_path / "dit.safetensors"), str(tmp_path / "out"), "--num-heads", "2"]) == 0
    ck = load_checkpoint(tmp_path / "out")
    assert ck.config.model.arch == "dit" and ck.config.diffusion.var_type == "learned_range"
    assert ck.config.sampling.clip_denoised is False and ck.config.sampling.steps == 250
    x, t, y = _inputs()
    with torch.no_grad():
        assert (ck.model(x, t, y) - d(x, t, y).sample).abs().max() <= 1e-5

    d2 = _diffusers_dit()
    d2.save_pretrained(tmp_path / "folder")
    assert main(["convert", "diffusers", str(tmp_path / "folder"), str(tmp_path / "out2")]) == 0
    assert load_checkpoint(tmp_path / "out2").config.model.timestep_freq_shift == 1
    capsys.readouterr()
    assert main(["info", "--preset", "dit-xl-2"]) == 0
    text = capsys.readouterr().out
    assert "675,129,632 parameters" in text and "sd-vae-ft-ema" in text and "0.18215" in text


# ------------------------------------------------------------------------------------------- fast path
def _random_dit() -> DiT:
    torch.manual_seed(0)
    net = DiT(tiny(depth=3))
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    return net


def test_bf16_autocast_and_the_sampling_fast_path():
    """The project's fast path (docs/speed.md) runs a DiT unchanged: bf16 autocast within the U-Net's
    bf16 tolerance of fp32 (tests/test_fast_path.py), fp32 master weights, float32 outputs to the sampler."""
    from ddpm import accel

    net = _random_dit().eval()
    x, t, y = _inputs()
    with torch.no_grad():
        ref = net(x, t, y)
        fast = accel.wrap_for_sampling(net, accel.FastPath(channels_last=False, precision="bf16"), "cpu")
        low = fast(x, t, y=y)
    assert low.dtype == torch.float32
    err = ((low.double() - ref.double()).norm() / ref.double().norm()).item()
    assert 0 < err <= 2e-2
    net.train()
    with accel.autocast("cpu", "bf16"):
        net(x, t, y).float().pow(2).mean().backward()
    assert all(p.grad.dtype == torch.float32 for p in net.parameters() if p.requires_grad)
    assert net.pos_embed.grad is None  # the fixed position embedding never trains


@pytest.mark.slow
def test_torch_compile_matches_eager():
    from ddpm import accel

    net = _random_dit().eval()
    x, t, y = _inputs()
    compiled = accel.compile_model(net)
    with torch.no_grad():
        ref = net(x, t, y)
        assert ((compiled(x, t, y) - ref).norm() / ref.norm()).item() <= 1e-4
