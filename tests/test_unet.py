"""The paper's U-Net: parameter counts, building blocks against hand-computed values, conditioning."""

import dataclasses
import math

import pytest
import torch

from ddpm.models.unet import UNetConfig
from ddpm.errors import ConfigError
from ddpm.presets import get_network
from ddpm.models.unet import Downsample, UNet, count_parameters, tf_same_pad, timestep_embedding


def meta_count(cfg: UNetConfig) -> int:
    with torch.device("meta"):
        return count_parameters(UNet(cfg))


@pytest.mark.parametrize(
    "name, overrides, expected",
    [
        ("cifar10", {}, 35_746_307),  # Ho et al. 2020 App. B (35.7M) / the authors' run_training "num params"
        ("cifar10", {"out_channels": 6}, 35_749_766),
        ("celebahq256", {}, 113_673_219),
        ("lsun256", {}, 113_673_219),
        ("lsun-bedroom-large", {}, 255_677_955),
        ("tiny", {}, 703_366),  # official_unet_tiny_params.txt
        # this project's presets (not the paper's): golden counts of the documented table (docs/network.md)
        ("small", {}, 2_245_763),
        ("digits", {}, 1_114_209),  # the shipped src/ddpm/assets/digits
        ("digits-tiny", {}, 162_177),
        ("cifar10-cond", {}, 35_751_939),
        ("improved-cifar10", {}, 49_066_246),
        ("repro-tiny", {}, 701_345),
    ],
)
def test_paper_parameter_counts(name, overrides, expected):
    assert meta_count(get_network(name, **overrides)) == expected


def test_cifar10_breakdown_matches_spec():
    with torch.device("meta"):
        m = UNet.from_preset("cifar10")
    n = lambda mod: count_parameters(mod)  # noqa: E731
    assert n(m.temb) == 328_704
    assert n(m.conv_in) == 3_584
    assert n(m.mid) == 2_888_704
    assert sum(n(lv.block) for lv in m.down) == 8_335_616
    assert sum(n(lv.downsample) for lv in m.down if lv.downsample is not None) == 1_327_744
    assert sum(n(lv.attn) for lv in m.down) == 527_360
    assert sum(n(lv.block) for lv in m.up) == 19_769_600
    assert sum(n(lv.upsample) for lv in m.up if lv.upsample is not None) == 1_770_240
    assert sum(n(lv.attn) for lv in m.up) == 791_040
    assert n(m.norm_out) + n(m.conv_out) == 3_715
    # 22 residual blocks and 6 attention blocks (Ho et al. 2020, App. B).
    names = [k for k, _ in m.named_modules()]
    assert sum(k.endswith("conv2") for k in names) == 22
    assert sum(k.endswith("proj_out") for k in names) == 6


def test_small_presets_are_cpu_sized():
    assert 1_000_000 <= meta_count(get_network("small")) <= 4_000_000
    assert 1_000_000 <= meta_count(get_network("digits")) <= 3_000_000
    assert get_network("digits").in_channels == 1 and get_network("digits").resolution == 28


def test_unknown_preset_lists_names():
    with pytest.raises(ConfigError, match="cifar10.*digits"):
        UNet.from_preset("cifar100")
    with pytest.raises(ConfigError, match="chh"):
        UNet.from_preset("tiny", chh=3)


def test_bad_width_is_config_error():
    with pytest.raises(ConfigError, match="multiple of model.norm_groups=32"):
        UNet(UNetConfig(ch=48, ch_mult=(1,), resolution=8))


def test_timestep_embedding_golden_values():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 128)
    assert emb.dtype == torch.float32 and emb.shape == (3, 128)
    # t = 0: sin(0) = 0 in the first half, cos(0) = 1 in the second (sin first).
    assert torch.equal(emb[0, :64], torch.zeros(64)) and torch.equal(emb[0, 64:], torch.ones(64))
    # Frequencies exp(-j ln(1e4) / 63): j = 1 -> 0.1461959... (the authors' nn.get_timestep_embedding); the last one is 1e-4.
    f1 = math.exp(-math.log(1e4) / 63)
    assert emb[1, 1].item() == pytest.approx(math.sin(f1), abs=1e-7)
    assert emb[1, 64 + 1].item() == pytest.approx(math.cos(f1), abs=1e-7)
    assert emb[1, 63].item() == pytest.approx(math.sin(1e-4), rel=1e-5)
    assert emb[2, 0].item() == pytest.approx(math.sin(999.0), abs=1e-5)
    assert emb[2, 64 + 10].item() == pytest.approx(math.cos(999.0 * math.exp(-10 * math.log(1e4) / 63)), abs=1e-4)
    # Odd widths are zero-padded on the last column.
    odd = timestep_embedding(torch.tensor([5]), 7)
    assert odd.shape == (1, 7) and odd[0, 6].item() == 0.0
    assert odd[0, 0].item() == pytest.approx(math.sin(5.0), abs=1e-6)


def test_tf_same_padding_rule():
    assert tf_same_pad(32) == (0, 1)  # even: the extra pixel goes right/bottom only
    assert tf_same_pad(28) == (0, 1)
    assert tf_same_pad(7) == (1, 1)  # odd: total 2, split evenly
    assert tf_same_pad(5) == (1, 1)


def test_downsample_matches_hand_computed_tf_same():
    down = Downsample(1)
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap of each 3x3 window
        down.conv.bias.zero_()
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # TF SAME for H=4: no top/left pad, so window (i, j) starts at input (2i, 2j).
    assert down(x)[0, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 2, 2] = 1.0  # bottom-right tap: reads the zero pad at the far edge
    assert down(x)[0, 0].tolist() == [[10.0, 0.0], [0.0, 0.0]]
    # Odd size 7 -> 4 with one pixel of padding on every side.
    y = down(torch.ones(1, 1, 7, 7))
    assert y.shape == (1, 1, 4, 4)
    assert y[0, 0, :, 3].tolist() == [0.0, 0.0, 0.0, 0.0] and y[0, 0, 0, 0].item() == 1.0


def test_init_statistics():
    torch.manual_seed(0)
    m = UNet.from_preset("tiny")
    bound = lambda w, scale=1.0: math.sqrt(3 * scale / ((w[0].numel() + w[:, 0].numel()) / 2))  # noqa: E731
    # fan_avg uniform: every ordinary weight lies within its xavier bound and fills most of it.
    w = m.down[0].block[0].conv1.weight
    assert w.abs().max() <= bound(w) and w.abs().max() > 0.9 * bound(w)
    w = m.temb.dense[0].weight
    assert w.abs().max() <= bound(w) and w.std().item() == pytest.approx(bound(w) / math.sqrt(3), rel=0.05)
    # init_scale 0 in the authors' code means 1e-10: conv_out bound ~ 1e-5 * xavier.
    for name in ("conv_out", "down.0.block.0.conv2", "mid.attn_1.proj_out"):
        w = m.get_submodule(name).weight
        b = bound(w, 1e-10)
        assert 0 < w.abs().max() <= b and w.abs().max() > 0.5 * b and b < 1e-5
    assert all(torch.count_nonzero(p) == 0 for k, p in m.named_parameters() if k.endswith(".bias"))
    gn = m.mid.block_1.norm1
    assert gn.eps == 1e-6 and gn.num_groups == 32 and torch.equal(gn.weight, torch.ones_like(gn.weight))


def _perturbed(model: UNet, seed: int = 0) -> UNet:
    """Random non-tiny weights everywhere, so outputs depend on every layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_learned_variance_shape_and_module_names():
    m = UNet.from_preset("tiny").eval()
    out = m(torch.randn(2, 3, 16, 16), torch.tensor([10, 900]))
    assert out.shape == (2, 6, 16, 16)
    keys = set(m.state_dict())
    for k in ("temb.dense.0.weight", "down.0.downsample.conv.weight", "down.1.attn.0.q.weight",
              "mid.block_1.conv1.weight", "mid.attn_1.proj_out.bias", "up.1.upsample.conv.weight",
              "up.0.block.1.nin_shortcut.weight", "norm_out.weight", "conv_out.weight"):
        assert k in keys, k
    assert len(keys) == 144  # one entry per TF variable of the fixture


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    m = _perturbed(UNet.from_preset("tiny", num_classes=3))
    out = m(torch.randn(2, 3, 16, 16), torch.tensor([1, 700]), torch.tensor([0, 2]))
    out.square().mean().backward()
    dead = [k for k, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_class_conditioning_and_null_label():
    m = _perturbed(UNet.from_preset("tiny", num_classes=10)).eval()
    assert m.label_emb.weight.shape == (11, 128)
    with torch.no_grad():
        m.label_emb.weight.normal_()  # nn.Embedding's own N(0, 1) init
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 5])
    with torch.no_grad():
        a = m(x, t, torch.tensor([1, 1]))
        b = m(x, t, torch.tensor([2, 2]))
        null = m(x, t)
        assert (a - b).abs().max() > 1e-3  # the label matters
        assert torch.equal(null, m(x, t, torch.tensor([10, 10])))  # y=None is label num_classes
        assert torch.equal(null, m(x, t, torch.tensor([-1, -1])))  # so is a negative label
        mixed = m(x, t, torch.tensor([1, -1]))
        assert torch.allclose(mixed[0], a[0], atol=1e-6) and torch.allclose(mixed[1], null[1], atol=1e-6)
    # Unconditional nets have no embedding and refuse labels.
    plain = UNet.from_preset("tiny")
    assert plain.label_emb is None and count_parameters(plain) == 703_366
    with pytest.raises(ConfigError):
        plain(x, t, torch.tensor([1, 1]))


def test_odd_resolution_round_trip():
    m = _perturbed(UNet.from_preset("digits")).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 1, 28, 28), torch.tensor([0, 999]))
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()
    # 28 -> 14 -> 7 -> 4 and back, through an extra level with attention at 7.
    cfg = dataclasses.replace(get_network("digits"), ch_mult=(1, 1, 1, 1), attn_resolutions=(7, 4))
    deeper = UNet(cfg).eval()
    assert len(deeper.down[2].attn) == 1 and len(deeper.down[3].attn) == 1
    with torch.no_grad():
        assert deeper(torch.randn(1, 1, 28, 28), torch.tensor([3])).shape == (1, 1, 28, 28)


def test_channels_last_and_bf16_autocast():
    m = _perturbed(UNet.from_preset("tiny")).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 600])
    with torch.no_grad():
        ref = m(x, t)
        assert torch.allclose(m(x.to(memory_format=torch.channels_last), t), ref, atol=1e-5)
        assert torch.allclose(m(x, t.float()), ref)  # float timesteps are accepted too
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x, t)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_dropout_only_in_training():
    m = _perturbed(UNet.from_preset("tiny", dropout=0.5))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([7])
    m.train()
    assert not torch.equal(m(x, t), m(x, t))
    m.eval()
    assert torch.equal(m(x, t), m(x, t))
