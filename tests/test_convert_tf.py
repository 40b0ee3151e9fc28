"""Importing the authors' TF variables: exact name coverage and output parity with their code."""

import dataclasses
import sys

import numpy as np
import pytest
import torch

from ddpm.errors import CheckpointError
from ddpm.models.convert_tf import (
    EMA_SUFFIX,
    convert_tf_state_dict,
    export_tf_arrays,
    infer_unet_config,
    load_tf_unet,
    read_tf_checkpoint,
)
from ddpm.presets import get_network
from ddpm.models.unet import UNet


def read_param_list(path):
    """(name, shape) rows of the fixtures' ``official_unet_*_params.txt``."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts or line.startswith("#") or parts[0] in ("name", "TOTAL"):
            continue
        rows.append((parts[0], tuple(int(s) for s in parts[1].split("x"))))
    return rows


def test_fixture_parity_float32(fixtures):
    data = dict(np.load(fixtures / "official_unet_tiny.npz"))
    cfg = get_network("tiny")
    model = UNet(cfg).eval()
    model.load_state_dict(convert_tf_state_dict(data, cfg))
    with torch.no_grad():
        out = model(torch.from_numpy(data["x"]), torch.from_numpy(data["t"]).long())
    err = (out - torch.from_numpy(data["out"])).abs().max().item()
    assert err <= 1e-5, err  # measured 2.9e-6 against TF 1.15 (max |out| = 2.5)


def test_fixture_architecture_is_inferred(fixtures):
    data = dict(np.load(fixtures / "official_unet_tiny.npz"))
    assert infer_unet_config(data, resolution=16) == get_network("tiny")


def test_cifar10_names_map_exactly(fixtures):
    rows = read_param_list(fixtures / "official_unet_cifar10_params.txt")
    assert len(rows) == 328
    arrays = {name: np.full(shape, i, np.float32) for i, (name, shape) in enumerate(rows)}
    cfg = get_network("cifar10")
    sd = convert_tf_state_dict(arrays, cfg)
    assert len(sd) == 328 and sum(v.numel() for v in sd.values()) == 35_746_307
    with torch.device("meta"):
        model = UNet(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    # Each TF variable landed in its own place: the fill value identifies it.
    index = {name: i for i, (name, _) in enumerate(rows)}
    assert torch.all(model.down[1].attn["0"].q.weight == index["model/down_1/attn_0/q/W"])
    assert torch.all(model.up[3].upsample.conv.bias == index["model/up_3/upsample/conv/b"])
    assert torch.all(model.mid.block_2.norm2.weight == index["model/mid/block_2/norm2/gamma"])
    assert infer_unet_config(arrays, resolution=32) == dataclasses.replace(cfg, dropout=0.0)


def test_layouts_on_a_hand_made_variable():
    cfg = get_network("tiny")
    arrays = export_tf_arrays(UNet(cfg))
    kernel = np.arange(3 * 3 * 3 * 32, dtype=np.float32).reshape(3, 3, 3, 32)  # HWIO
    arrays["model/conv_in/W"] = kernel
    dense = np.arange(32 * 128, dtype=np.float32).reshape(32, 128)  # (in, out)
    arrays["model/temb/dense0/W"] = dense
    nin = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    arrays["model/mid/attn_1/k/W"] = nin
    sd = convert_tf_state_dict(arrays, cfg)
    # out-channel 5, in-channel 2, row 1, column 0 of the PyTorch kernel is HWIO [1, 0, 2, 5].
    assert sd["conv_in.weight"][5, 2, 1, 0].item() == kernel[1, 0, 2, 5]
    assert sd["temb.dense.0.weight"][7, 3].item() == dense[3, 7]
    assert sd["mid.attn_1.k.weight"][7, 3, 0, 0].item() == nin[3, 7]


def test_export_round_trip_is_exact():
    torch.manual_seed(0)
    src = UNet(get_network("tiny", num_res_blocks=2))
    arrays = export_tf_arrays(src)
    dst = UNet(src.config)
    dst.load_state_dict(convert_tf_state_dict(arrays, src.config))
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def _checkpoint_like(cfg):
    """Raw variables, EMA shadows (raw + 1), Adam slots and bookkeeping, as in the authors' checkpoints."""
    raw = export_tf_arrays(UNet(cfg))
    arrays = dict(raw)
    for k, v in raw.items():
        arrays[k + EMA_SUFFIX] = v + 1.0
        arrays[k + "/Adam"] = np.zeros_like(v)
        arrays[k + "/Adam_1"] = np.zeros_like(v)
    arrays["global_step"] = np.array(1000)
    arrays["beta1_power"] = np.array(0.9, np.float32)
    return raw, arrays


def test_ema_is_the_default_and_raw_is_selectable():
    cfg = get_network("tiny")
    raw, arrays = _checkpoint_like(cfg)
    ema_sd = convert_tf_state_dict(arrays, cfg)
    raw_sd = convert_tf_state_dict(arrays, cfg, ema=False)
    assert torch.equal(ema_sd["conv_in.bias"], raw_sd["conv_in.bias"] + 1.0)
    assert np.array_equal(raw_sd["conv_out.bias"].numpy(), raw["model/conv_out/b"])
    with pytest.raises(CheckpointError, match="no EMA"):
        convert_tf_state_dict(raw, cfg, ema=True)


def test_mismatches_are_checkpoint_errors():
    cfg = get_network("tiny")
    raw = export_tf_arrays(UNet(cfg))
    missing = {k: v for k, v in raw.items() if k != "model/mid/attn_1/q/W"}
    with pytest.raises(CheckpointError, match="1 missing.*mid/attn_1/q/W"):
        convert_tf_state_dict(missing, cfg)
    extra = dict(raw, **{"model/down_1/attn_9/q/W": np.zeros((64, 64), np.float32)})
    with pytest.raises(CheckpointError, match="unexpected.*attn_9"):
        convert_tf_state_dict(extra, cfg)
    with pytest.raises(CheckpointError, match="wrongly shaped"):
        convert_tf_state_dict(raw, get_network("tiny", out_channels=3))


def test_npz_file_loading_and_missing_tensorflow(tmp_path, monkeypatch):
    torch.manual_seed(1)
    src = UNet(get_network("tiny")).eval()
    path = tmp_path / "vars.npz"
    np.savez(path, **export_tf_arrays(src))
    model = load_tf_unet(path, resolution=16)
    assert model.config == src.config and not model.training
    assert torch.equal(model.conv_out.weight, src.conv_out.weight)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_tf_checkpoint(tmp_path / "nope.npz")
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # make `import tensorflow` fail
    with pytest.raises(CheckpointError, match="pip install tensorflow"):
        read_tf_checkpoint(tmp_path / "model.ckpt-100")


def test_cli_converts_fixture_to_a_checkpoint(fixtures, tmp_path, capsys):
    from ddpm.cli import main
    from ddpm.checkpoint import load_checkpoint

    data = dict(np.load(fixtures / "official_unet_tiny.npz"))
    out = tmp_path / "ckpt"
    assert main(["convert", "tf", str(fixtures / "official_unet_tiny.npz"), str(out), "--resolution", "16"]) == 0
    assert "703,366 parameters, raw weights" in capsys.readouterr().out
    ckpt = load_checkpoint(out, use_ema=False)
    assert ckpt.config.model == get_network("tiny") and ckpt.config.diffusion.var_type == "learned"  # 6 outputs: the learned variance
    with torch.no_grad():
        got = ckpt.model(torch.from_numpy(data["x"]), torch.from_numpy(data["t"]).long())
    assert (got - torch.from_numpy(data["out"])).abs().max() <= 1e-5
    # A second conversion into the same place must be asked for explicitly.
    assert main(["convert", "tf", str(fixtures / "official_unet_tiny.npz"), str(out), "--resolution", "16"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", "tf", str(fixtures / "official_unet_tiny.npz"), str(tmp_path / "x")]) == 2
    assert "--preset" in capsys.readouterr().err


def test_cli_stores_ema_weights_and_step(tmp_path):
    from ddpm.cli import main
    from ddpm.checkpoint import load_checkpoint

    cfg = get_network("tiny", out_channels=3)  # fixed variance: image channels out
    _, arrays = _checkpoint_like(cfg)
    np.savez(tmp_path / "vars.npz", **arrays)
    assert main(["convert", "tf", str(tmp_path / "vars.npz"), str(tmp_path / "ema"), "--resolution", "16",
                 "--var-type", "fixedsmall"]) == 0
    ckpt = load_checkpoint(tmp_path / "ema")
    assert ckpt.weights == "ema" and ckpt.step == 1000 and ckpt.config.diffusion.var_type == "fixedsmall"
    assert np.array_equal(ckpt.model.conv_in.bias.detach().numpy(), arrays["model/conv_in/b" + EMA_SUFFIX])
    assert main(["convert", "tf", str(tmp_path / "vars.npz"), str(tmp_path / "raw"), "--resolution", "16",
                 "--raw"]) == 0
    raw = load_checkpoint(tmp_path / "raw", use_ema=False)
    assert np.array_equal(raw.model.conv_in.bias.detach().numpy(), arrays["model/conv_in/b"])
