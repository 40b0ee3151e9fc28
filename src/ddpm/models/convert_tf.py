"""Import the authors' TensorFlow U-Net variables (``diffusion_tf``) into :class:`ddpm.models.unet.UNet`.

The TF names (``model/down_0/block_0/conv1/W``) and our module names (``down.0.block.0.conv1.weight``)
are in one-to-one correspondence; only the layouts differ: TF conv kernels are HWIO, dense and
``nin`` weights are (in, out). The authors' checkpoints also hold an EMA shadow of every variable,
``<name>/ExponentialMovingAverage``, which is what they sampled and evaluated with.

Works on any mapping of names to arrays (e.g. an ``.npz``), or directly on a TF checkpoint when
TensorFlow is installed (:func:`read_tf_checkpoint`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ddpm.errors import CheckpointError
from ddpm.models.unet import UNet, UNetConfig, level_sizes

EMA_SUFFIX = "/ExponentialMovingAverage"
_LEAF = {"weight": {"W", "gamma"}, "bias": {"b", "beta"}}
# Optimizer slots and bookkeeping stored beside the model variables in a TF checkpoint.
_IGNORED = re.compile(r"/(Adam|Adam_\d+|Momentum|RMSProp\w*)$|^(global_step|beta\d_power)")


def tf_name(torch_name: str, param: torch.Tensor) -> str:
    """The authors' TF variable name for one of our state-dict entries."""
    *path, leaf = torch_name.split(".")
    out: list[str] = []
    i = 0
    while i < len(path):
        part = path[i]
        if part in ("down", "up", "block", "attn") and i + 1 < len(path) and path[i + 1].isdigit():
            out.append(f"{part}_{path[i + 1]}")
            i += 2
        elif part == "dense":  # temb.dense.0 -> temb/dense0
            out.append(f"dense{path[i + 1]}")
            i += 2
        else:
            out.append(part)
            i += 1
    is_norm = param.ndim == 1 and _is_norm_path(out)
    tf_leaf = ("gamma" if is_norm else "W") if leaf == "weight" else ("beta" if is_norm else "b")
    return "model/" + "/".join(out) + "/" + tf_leaf


def _is_norm_path(parts: list[str]) -> bool:
    return parts[-1].startswith("norm")


def to_torch_layout(arr: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """TF layout -> PyTorch layout for a parameter shaped like ``like``."""
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if like.ndim == 4 and t.ndim == 4:  # conv HWIO -> OIHW
        t = t.permute(3, 2, 0, 1)
    elif like.ndim == 4 and t.ndim == 2:  # nin (in, out) -> 1x1 conv (out, in, 1, 1)
        t = t.t()[:, :, None, None]
    elif like.ndim == 2 and t.ndim == 2:  # dense (in, out) -> Linear (out, in)
        t = t.t()
    return t.contiguous()


def to_tf_layout(t: torch.Tensor) -> np.ndarray:
    """PyTorch layout -> TF layout (the inverse of :func:`to_torch_layout`); 1x1 convs become (in, out)."""
    t = t.detach().cpu()
    if t.ndim == 4 and t.shape[-2:] == (1, 1):
        t = t[:, :, 0, 0].t()
    elif t.ndim == 4:
        t = t.permute(2, 3, 1, 0)
    elif t.ndim == 2:
        t = t.t()
    return t.contiguous().numpy()


def _normalise_names(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    # The fixture npz stores variables as "param/<name>"; TF checkpoints use the bare names.
    return {(k[len("param/"):] if k.startswith("param/") else k): v for k, v in arrays.items()}


def has_ema(arrays: Mapping[str, np.ndarray]) -> bool:
    return any(k.endswith(EMA_SUFFIX) for k in _normalise_names(arrays))


def convert_tf_state_dict(
    arrays: Mapping[str, np.ndarray], config: UNetConfig, *, ema: bool | None = None
) -> dict[str, torch.Tensor]:
    """Map the authors' TF variables to a state dict for ``UNet(config)``.

    ``ema=None`` takes the EMA shadows when present (the weights the paper evaluated) and the raw
    variables otherwise; ``ema=True`` requires them, ``ema=False`` takes the raw variables.
    Missing, unexpected or wrongly shaped variables raise :class:`CheckpointError`.
    """
    arrays = _normalise_names(arrays)
    found_ema = any(k.endswith(EMA_SUFFIX) for k in arrays)
    if ema is None:
        ema = found_ema
    if ema and not found_ema:
        raise CheckpointError("no EMA variables (<name>/ExponentialMovingAverage) in this checkpoint; convert with --raw")
    suffix = EMA_SUFFIX if ema else ""

    with torch.device("meta"):
        reference = UNet(config).state_dict()
    out: dict[str, torch.Tensor] = {}
    missing, bad_shape, used = [], [], set()
    for name, like in reference.items():
        key = tf_name(name, like) + suffix
        if key not in arrays:
            missing.append(key)
            continue
        used.add(key)
        try:
            t = to_torch_layout(np.asarray(arrays[key]), like)
        except (TypeError, RuntimeError, ValueError):  # not a numeric array
            bad_shape.append(f"{key} {np.asarray(arrays[key]).dtype} {tuple(np.shape(arrays[key]))}")
            continue
        if tuple(t.shape) != tuple(like.shape):
            bad_shape.append(f"{key} {tuple(np.shape(arrays[key]))} (expected {tuple(like.shape)} as {name})")
            continue
        out[name] = t.to(torch.float32)
    unexpected = sorted(
        k for k in arrays
        if k.startswith("model/") and k not in used and k.endswith(EMA_SUFFIX) == bool(ema) and not _IGNORED.search(k)
    )
    if missing or bad_shape or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if bad_shape:
            parts.append(f"{len(bad_shape)} wrongly shaped (e.g. {'; '.join(bad_shape[:2])})")
        raise CheckpointError(
            "TF variables do not fit this U-Net config: " + "; ".join(parts) + "; check the preset/--resolution"
        )
    return out


def export_tf_arrays(model: UNet) -> dict[str, np.ndarray]:
    """Our weights under the authors' TF names and layouts (the inverse of :func:`convert_tf_state_dict`)."""
    return {tf_name(k, v): to_tf_layout(v) for k, v in model.state_dict().items()}


def tf_step(arrays: Mapping[str, np.ndarray]) -> int:
    """The checkpoint's ``global_step`` (0 when absent)."""
    if "global_step" not in arrays:
        return 0
    try:
        return int(np.asarray(arrays["global_step"]).reshape(-1)[0])
    except (TypeError, ValueError, IndexError, OverflowError):
        raise CheckpointError("global_step is not a number; is this the authors' TF checkpoint?") from None


def infer_unet_config(arrays: Mapping[str, np.ndarray], resolution: int, *, ema: bool | None = None,
                      dropout: float = 0.0) -> UNetConfig:
    """See :func:`_infer_unet_config`; variables of impossible shapes give a one-line CheckpointError."""
    try:
        return _infer_unet_config(arrays, resolution, ema=ema, dropout=dropout)
    except (IndexError, KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise CheckpointError(f"the variables do not describe the authors' U-Net ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else '?'}); give --preset instead") from None


def _infer_unet_config(arrays: Mapping[str, np.ndarray], resolution: int, *, ema: bool | None = None,
                       dropout: float = 0.0) -> UNetConfig:
    """Read the architecture off the variable names and shapes; only the input size cannot be read.

    Attention levels are found from the ``down_i/attn_j`` scopes and turned into resolutions using
    ``resolution``. ``dropout`` is a training setting that leaves no trace in the weights.
    """
    arrays = _normalise_names(arrays)
    if ema is None:
        ema = any(k.endswith(EMA_SUFFIX) for k in arrays)
    names = {k[: -len(EMA_SUFFIX)] if k.endswith(EMA_SUFFIX) else k for k in arrays
             if k.endswith(EMA_SUFFIX) == bool(ema)}
    try:
        conv_in = np.shape(arrays["model/conv_in/W" + (EMA_SUFFIX if ema else "")])
        conv_out = np.shape(arrays["model/conv_out/W" + (EMA_SUFFIX if ema else "")])
    except KeyError:
        raise CheckpointError("no model/conv_in/W or model/conv_out/W: this is not the authors' U-Net checkpoint")
    in_ch, ch = int(conv_in[2]), int(conv_in[3])
    levels = sorted({int(m.group(1)) for n in names if (m := re.match(r"model/down_(\d+)/", n))})
    blocks = {int(m.group(1)) for n in names if (m := re.match(r"model/down_0/block_(\d+)/", n))}
    ch_mult = []
    for i in levels:
        w = np.shape(arrays[f"model/down_{i}/block_0/conv1/W" + (EMA_SUFFIX if ema else "")])
        ch_mult.append(int(w[3]) // ch)
    sizes = level_sizes(resolution, len(levels))
    attn = tuple(sorted({sizes[i] for i in levels if any(n.startswith(f"model/down_{i}/attn_") for n in names)},
                        reverse=True))
    return UNetConfig(
        in_channels=in_ch, out_channels=int(conv_out[3]), ch=ch, ch_mult=tuple(ch_mult),
        num_res_blocks=len(blocks), attn_resolutions=attn, dropout=dropout, resolution=resolution,
    )


def read_tf_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """All variables of a TF checkpoint (``model.ckpt-NNN`` prefix or its directory), or of an ``.npz``.

    TensorFlow is imported only here, so the rest of the package never needs it.
    """
    path = Path(path)
    if path.suffix == ".npz":
        from ddpm.images import read_npz

        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; give the .npz of TF variables to convert")
        arrays = read_npz(path, error=CheckpointError)  # allow_pickle=False: nothing is unpickled
        odd = [k for k, v in arrays.items() if v.dtype.kind not in "fiub"]
        if odd:
            raise CheckpointError(f"{path}: variable {odd[0]} holds {arrays[odd[0]].dtype} values, not numbers; "
                                  "is this an .npz of the authors' TF variables?")
        return arrays
    try:
        import tensorflow as tf  # noqa: PLC0415 - optional, heavy dependency
    except ImportError:
        raise CheckpointError(
            f"reading the TF checkpoint {path} needs TensorFlow: pip install tensorflow "
            "(or export its variables to an .npz and convert that)"
        ) from None
    try:
        reader = tf.train.load_checkpoint(str(path))
    except Exception as exc:  # TF raises several unrelated types for a bad path
        raise CheckpointError(f"cannot read TF checkpoint {path}: {str(exc).splitlines()[0]}") from None
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def load_tf_unet(path: str | Path, config: UNetConfig | None = None, *, resolution: int | None = None,
                 ema: bool | None = None) -> UNet:
    """Build a :class:`UNet` holding the weights of the authors' checkpoint (or ``.npz``) at ``path``.

    Without ``config`` the architecture is inferred from the variables and ``resolution``.
    """
    arrays = read_tf_checkpoint(path)
    if config is None:
        if resolution is None:
            raise CheckpointError("give the U-Net preset or the image resolution the TF checkpoint was trained at")
        config = infer_unet_config(arrays, resolution, ema=ema)
    model = UNet(config)
    model.load_state_dict(convert_tf_state_dict(arrays, config, ema=ema))
    return model.eval()
