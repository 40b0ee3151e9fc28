"""Import (and export) DDPM U-Nets in the diffusers ``UNet2DModel`` layout.

The published ports of the paper's checkpoints (``google/ddpm-cifar10-32``, ``-celebahq-256``,
``-church-256``, ``-bedroom-256``, ``-cat-256``) are ``UNet2DModel`` s with exactly the authors'
architecture: ``downsample_padding=0`` (diffusers then pads right/bottom, TF 'SAME'),
``flip_sin_to_cos=False`` and ``freq_shift=1`` (sin first, ln(1e4)/(half-1)), ``norm_eps=1e-6`` and
single-head attention (``attention_head_dim=None``). Their attention layers are ``Linear`` s
(``to_q``/``to_k``/``to_v``/``to_out.0``; ``query``/``key``/``value``/``proj_attn`` in older files)
where ours are 1x1 convs, and their up blocks are numbered from the bottom.

Any other ``UNet2DModel`` whose blocks are the DDPM ones imports too: diffusers' own defaults
(``flip_sin_to_cos=True``, ``freq_shift=0``, ``norm_eps=1e-5``, ``downsample_padding=1``,
``attention_head_dim=8``, as its training example produces) are fields of :class:`UNetConfig` of the
same names; a config the DDPM U-Net cannot express (other blocks, another embedding, scale-shift
norms, ...) is a one-line ConfigError.

diffusers itself is not needed to convert: configs are plain JSON and weights safetensors (or a
``.bin`` read with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ddpm.config import DiffusionConfig
from ddpm.errors import CheckpointError, ConfigError
from ddpm.models.unet import GN_EPS, GN_GROUPS, UNet, UNetConfig, level_sizes

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# What our UNet hard-wires; a diffusers config that differs describes another network.
_REQUIRED = {
    "act_fn": "silu",
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "resnet_time_scale_shift": "default",
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2D",
    "add_attention": True,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "class_embed_type": None,
    "attn_norm_num_groups": None,
}
# UNet2DModel options that are UNetConfig fields of the same name, with diffusers' defaults (what a
# config.json that leaves them out means).
_CONVENTIONS = {"flip_sin_to_cos": True, "freq_shift": 0, "norm_eps": 1e-5, "downsample_padding": 1}
_DEFAULTS_MATCH = ("mid_block_type", "add_attention", "downsample_type", "upsample_type", "class_embed_type",
                   "attn_norm_num_groups")
_LEGACY_ATTN = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
_SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}
_VAR_TYPES = {
    "fixed_small": "fixedsmall", "fixed_small_log": "fixedsmall",
    "fixed_large": "fixedlarge", "fixed_large_log": "fixedlarge",
    "learned": "learned", "learned_range": "learned_range",
}
_MEAN_TYPES = {"epsilon": "eps", "sample": "xstart", "v_prediction": "v"}


def unet_config_from_diffusers(cfg: dict[str, Any]) -> UNetConfig:
    """The :class:`UNetConfig` equivalent to a ``UNet2DModel`` config dict (its ``config.json``).

    Raises :class:`ConfigError` for settings the paper's network cannot express (other block types,
    multi-head attention, another embedding, ...). ``num_class_embeds = n`` becomes
    ``num_classes = n - 1``: we treat the last class embedding as the null label.
    """
    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ConfigError(f"expected a diffusers UNet2DModel config, got {cfg.get('_class_name')!r}")
    for key, want in _REQUIRED.items():
        got = cfg.get(key, want)
        if got != want:
            raise ConfigError(f"diffusers config has {key}={got!r}; the DDPM U-Net needs {key}={want!r}")
    conventions = {key: cfg.get(key, default) for key, default in _CONVENTIONS.items()}
    if conventions["downsample_padding"] not in (0, 1):
        raise ConfigError(f"diffusers downsample_padding={conventions['downsample_padding']!r}; 0 (the authors') "
                          "or 1 (diffusers' default) can be imported")
    chans = list(cfg["block_out_channels"])
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    if not (len(chans) == len(down) == len(up)):
        raise ConfigError("diffusers config: block_out_channels, down_block_types and up_block_types differ in length")
    ch = chans[0]
    if any(c % ch for c in chans):
        raise ConfigError(f"diffusers block_out_channels {chans} are not multiples of the first width {ch}")
    attn_levels = []
    for i, (d, u) in enumerate(zip(down, reversed(up))):
        if d not in ("DownBlock2D", "AttnDownBlock2D") or u not in ("UpBlock2D", "AttnUpBlock2D"):
            raise ConfigError(f"diffusers block types {d}/{u} are not part of the DDPM U-Net")
        if (d == "AttnDownBlock2D") != (u == "AttnUpBlock2D"):
            raise ConfigError(f"diffusers config has attention on only one side of level {i}; the DDPM U-Net needs both")
        if d == "AttnDownBlock2D":
            attn_levels.append(i)
    head_dim = cfg.get("attention_head_dim", 8)  # diffusers' default: heads of 8 channels
    if isinstance(head_dim, (list, tuple)):
        raise ConfigError(f"diffusers attention_head_dim={head_dim} (one per level) is not supported; "
                          "the DDPM U-Net takes one head size")
    if head_dim is not None and all(head_dim == chans[i] for i in attn_levels + [len(chans) - 1]):
        head_dim = None  # one head per layer: the paper's attention
    if head_dim is not None and any(chans[i] % head_dim for i in attn_levels + [len(chans) - 1]):
        raise ConfigError(f"diffusers attention_head_dim={head_dim} does not divide the attention widths {chans}")
    temb_dim = cfg.get("time_embedding_dim")
    if temb_dim is not None and temb_dim != 4 * ch:
        raise ConfigError(f"diffusers time_embedding_dim={temb_dim}; the DDPM U-Net uses 4 x {ch}")
    size = cfg.get("sample_size") or 32
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ConfigError(f"non-square sample_size {size} is not supported")
        size = size[0]
    sizes = level_sizes(int(size), len(chans))
    n_cls = cfg.get("num_class_embeds")
    return UNetConfig(
        in_channels=int(cfg.get("in_channels", 3)),
        out_channels=int(cfg.get("out_channels", 3)),
        ch=int(ch),
        ch_mult=tuple(c // ch for c in chans),
        num_res_blocks=int(cfg.get("layers_per_block", 2)),
        attn_resolutions=tuple(sizes[i] for i in attn_levels),
        dropout=float(cfg.get("dropout", 0.0)),
        resolution=int(size),
        num_classes=int(n_cls) - 1 if n_cls else None,
        norm_groups=int(cfg.get("norm_num_groups", GN_GROUPS)),
        flip_sin_to_cos=bool(conventions["flip_sin_to_cos"]),
        freq_shift=int(conventions["freq_shift"]),
        # the paper's 1e-6 is written 1e-06 by some tools: keep it bit-equal to GN_EPS
        norm_eps=GN_EPS if abs(float(conventions["norm_eps"]) - GN_EPS) < 1e-12 else float(conventions["norm_eps"]),
        attention_head_dim=int(head_dim or 0),
        downsample_padding=int(conventions["downsample_padding"]),
    )


def diffusers_kwargs_for(config: UNetConfig) -> dict[str, Any]:
    """``UNet2DModel(**kwargs)`` arguments building the same network as ``UNet(config)``."""
    if config.ch_mult[0] != 1:
        raise ConfigError("diffusers' UNet2DModel needs ch_mult[0] == 1 (its conv_in width is the first level's)")
    if not config.resamp_with_conv:
        raise ConfigError("diffusers' UNet2DModel export needs resamp_with_conv=True")
    sizes = level_sizes(config.resolution, len(config.ch_mult))
    attn = [s in set(config.attn_resolutions) for s in sizes]
    kwargs: dict[str, Any] = dict(
        sample_size=config.resolution,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        block_out_channels=tuple(config.ch * m for m in config.ch_mult),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        layers_per_block=config.num_res_blocks,
        attention_head_dim=config.attention_head_dim or None,
        num_class_embeds=config.num_classes + 1 if config.num_classes else None,
        norm_num_groups=config.norm_groups,
        flip_sin_to_cos=config.flip_sin_to_cos,
        freq_shift=config.freq_shift,
        norm_eps=config.norm_eps,
        downsample_padding=config.downsample_padding,
    )
    if config.dropout:
        kwargs["dropout"] = config.dropout
    # Settings whose UNet2DModel defaults already match (and that older diffusers lack) are left out.
    kwargs.update({k: v for k, v in _REQUIRED.items() if k not in _DEFAULTS_MATCH})
    return kwargs


def diffusers_name(name: str, num_levels: int) -> str:
    """The diffusers state-dict key for one of our keys (new-style attention names)."""
    def level(m: re.Match) -> str:
        kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
        idx = i if kind == "down" else num_levels - 1 - i
        rest = re.sub(r"^block\.", "resnets.", rest)
        rest = re.sub(r"^attn\.", "attentions.", rest)
        rest = re.sub(r"^(downsample|upsample)\.", lambda r: r.group(1) + "rs.0.", rest)
        return f"{kind}_blocks.{idx}.{rest}"

    n = re.sub(r"^(down|up)\.(\d+)\.(.*)$", level, name)
    n = n.replace("mid.block_1.", "mid_block.resnets.0.").replace("mid.block_2.", "mid_block.resnets.1.")
    n = n.replace("mid.attn_1.", "mid_block.attentions.0.")
    n = re.sub(r"^temb\.dense\.(\d)\.", lambda m: f"time_embedding.linear_{int(m.group(1)) + 1}.", n)
    n = n.replace("label_emb.", "class_embedding.").replace("norm_out.", "conv_norm_out.")
    n = n.replace(".temb_proj.", ".time_emb_proj.").replace(".nin_shortcut.", ".conv_shortcut.")
    if ".attentions." in n:
        head, leaf = n.rsplit(".", 1)
        prefix, layer = head.rsplit(".", 1)
        layer = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}[layer]
        n = f"{prefix}.{layer}.{leaf}"
    return n


def _legacy(name: str) -> str:
    for new, old in _LEGACY_ATTN.items():
        name = name.replace(f".{new}.", f".{old}.")
    return name


def remap_diffusers_weights(sd: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], name_of,
                            what: str) -> dict[str, torch.Tensor]:
    """Our state dict for ``reference`` (name -> tensor of the right shape) from diffusers' ``sd``:
    ``name_of(our_name)`` gives diffusers' name (legacy attention names accepted), Linear attention
    projections become 1×1 convs, and every shape, missing and left-over weight is checked."""
    out, missing, used = {}, [], set()
    for name, like in reference.items():
        key = name_of(name)
        if key not in sd and _legacy(key) in sd:
            key = _legacy(key)
        if key not in sd:
            missing.append(key)
            continue
        used.add(key)
        t = sd[key]
        if like.ndim == 4 and t.ndim == 2:  # Linear attention projection -> 1x1 conv
            t = t[:, :, None, None]
        if tuple(t.shape) != tuple(like.shape):
            raise CheckpointError(f"{what}: {key} has shape {tuple(t.shape)}, expected {tuple(like.shape)}")
        out[name] = t.detach().to("cpu", torch.float32).contiguous()
    unexpected = sorted(set(sd) - used)
    if missing or unexpected:
        raise CheckpointError(f"{what} do not fit the config: {len(missing)} missing (e.g. {missing[:3]}), "
                              f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    return out


def convert_diffusers_state_dict(sd: dict[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    """A ``UNet2DModel`` state dict (new or legacy attention names) -> state dict for ``UNet(config)``."""
    with torch.device("meta"):
        reference = UNet(config).state_dict()
    levels = len(config.ch_mult)
    return remap_diffusers_weights(sd, reference, lambda name: diffusers_name(name, levels), "diffusers weights")


def to_diffusers_state_dict(model: UNet) -> dict[str, torch.Tensor]:
    """Our weights under ``UNet2DModel(**diffusers_kwargs_for(model.config))`` names and shapes."""
    levels = len(model.config.ch_mult)
    out = {}
    for name, t in model.state_dict().items():
        key = diffusers_name(name, levels)
        if ".attentions." in key and t.ndim == 4 and not key.endswith("group_norm.weight"):
            t = t[:, :, 0, 0]
        out[key] = t.detach().clone()
    return out


def diffusion_config_from_scheduler(cfg: dict[str, Any]) -> DiffusionConfig:
    """A ``DDPMScheduler`` config dict -> :class:`DiffusionConfig` (unknown settings are errors).

    ``clip_sample`` corresponds to our ``clip_denoised`` sampling argument (default True), so it is
    not part of the diffusion config.
    """
    if cfg.get("trained_betas") is not None:
        raise ConfigError("scheduler config has trained_betas; only named beta schedules can be imported")
    schedule = cfg.get("beta_schedule", "linear")
    var = cfg.get("variance_type", "fixed_small")
    pred = cfg.get("prediction_type", "epsilon")
    for what, value, table in (("beta_schedule", schedule, _SCHEDULES), ("variance_type", var, _VAR_TYPES),
                               ("prediction_type", pred, _MEAN_TYPES)):
        if value not in table:
            raise ConfigError(f"scheduler {what}={value!r} is not supported; supported: {', '.join(table)}")
    if cfg.get("rescale_betas_zero_snr") or cfg.get("thresholding"):
        raise ConfigError("scheduler options rescale_betas_zero_snr/thresholding are not supported")
    var_type = _VAR_TYPES[var]
    return DiffusionConfig(
        schedule=_SCHEDULES[schedule],
        beta_start=float(cfg.get("beta_start", 1e-4)),
        beta_end=float(cfg.get("beta_end", 0.02)),
        num_timesteps=int(cfg.get("num_train_timesteps", 1000)),
        mean_type=_MEAN_TYPES[pred],
        var_type=var_type,
        loss_type="hybrid" if var_type.startswith("learned") else "mse",
    )


def find_diffusers_files(path: str | Path) -> tuple[Path, Path, Path | None]:
    """(unet config.json, weights file, scheduler config or None) of a diffusers folder.

    Handles the pipeline layout (``unet/`` + ``scheduler/``) and a flat folder with everything at the
    top level (as in ``google/ddpm-cifar10-32``).
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a directory; give the diffusers folder (with config.json)")
    unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    config = unet_dir / "config.json"
    if not config.is_file():
        raise CheckpointError(f"no config.json in {root} or {root / 'unet'}; is this a diffusers UNet2DModel folder?")
    weights = next((unet_dir / w for w in WEIGHT_NAMES if (unet_dir / w).is_file()), None)
    if weights is None:
        raise CheckpointError(f"no {' or '.join(WEIGHT_NAMES)} in {unet_dir}; download the weights file there")
    sched = next((p for p in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json",
                              unet_dir / "scheduler_config.json") if p.is_file()), None)
    return config, weights, sched


def read_diffusers_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a ``.bin`` via ``torch.load(weights_only=True)`` (no pickle code)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated files raise assorted types
        raise CheckpointError(f"cannot read weights {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return sd


def diffusers_model_class(path: str | Path) -> str | None:
    """The ``_class_name`` of the main model in a diffusers folder (``unet/``, ``transformer/``, ``vae/``
    or the top level), or None."""
    root = Path(path)
    for sub in ("unet", "transformer", "", "vae"):
        cfg = root / sub / "config.json" if sub else root / "config.json"
        if cfg.is_file():
            try:
                return json.loads(cfg.read_text()).get("_class_name")
            except json.JSONDecodeError:
                raise CheckpointError(f"{cfg} is not valid JSON") from None
    return None


def load_diffusers_folder(path: str | Path):
    """A diffusers folder -> (our network in eval mode, the matching :class:`DiffusionConfig`).

    ``UNet2DModel`` folders (the DDPM ports) give a U-Net; ``DiTTransformer2DModel`` folders a DiT, or a
    latent model when the pipeline has its ``vae/`` (:mod:`ddpm.models.convert_dit`); ``AutoencoderKL``
    folders an autoencoder (:mod:`ddpm.models.convert_autoencoder`; its diffusion config is unused).
    Without a scheduler config the diffusers ``DDPMScheduler`` defaults are assumed (the paper's
    linear 1e-4 -> 0.02 schedule over 1000 steps, fixed_small variance, epsilon prediction).
    """
    kind = diffusers_model_class(path)
    if kind in ("DiTTransformer2DModel", "Transformer2DModel"):
        from ddpm.models.convert_dit import load_diffusers_dit

        return load_diffusers_dit(path)
    if kind == "AutoencoderKL":
        from ddpm.models.convert_autoencoder import load_autoencoder_folder

        return load_autoencoder_folder(path), DiffusionConfig()
    config_path, weights_path, sched_path = find_diffusers_files(path)
    try:
        unet_cfg = unet_config_from_diffusers(json.loads(config_path.read_text()))
        sched = json.loads(sched_path.read_text()) if sched_path else {}
    except (json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"unreadable diffusers config in {path}: {exc}") from None
    diffusion = diffusion_config_from_scheduler(sched)
    model = UNet(unet_cfg)
    model.load_state_dict(convert_diffusers_state_dict(read_diffusers_weights(weights_path), unet_cfg))
    return model.eval(), diffusion


def scheduler_config_for(diffusion: DiffusionConfig) -> dict[str, Any]:
    """The ``DDPMScheduler`` config describing ``diffusion`` (inverse of :func:`diffusion_config_from_scheduler`)."""
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": diffusion.num_timesteps,
        "beta_start": diffusion.beta_start,
        "beta_end": diffusion.beta_end,
        "beta_schedule": _inverse(_SCHEDULES, diffusion.schedule, "schedule"),
        "variance_type": _inverse(_VAR_TYPES, diffusion.var_type, "var_type"),
        "prediction_type": _inverse(_MEAN_TYPES, diffusion.mean_type, "mean_type"),
        "clip_sample": True,
    }


def _inverse(table: dict[str, str], value: str, what: str) -> str:
    for theirs, ours in table.items():
        if ours == value:
            return theirs
    raise ConfigError(f"diffusion {what}={value!r} has no diffusers DDPMScheduler equivalent")


def save_diffusers_folder(model: UNet, diffusion: DiffusionConfig, path: str | Path) -> Path:
    """Write a diffusers ``DDPMPipeline`` folder: ``path/model_index.json``,
    ``path/unet/{config.json, diffusion_pytorch_model.safetensors}`` and
    ``path/scheduler/scheduler_config.json``, loadable by ``DDPMPipeline.from_pretrained`` and by
    :func:`load_diffusers_folder`."""
    from safetensors.torch import save_file

    arch = getattr(model.config, "arch", "unet")
    if arch != "unet":  # e.g. a consistency model: its boundary parameterisation is not a UNet2DModel's
        raise ConfigError(f"only U-Net checkpoints export to diffusers; this is a {arch!r} network")
    root = Path(path)
    config = {"_class_name": "UNet2DModel", **diffusers_kwargs_for(model.config)}
    sched = scheduler_config_for(diffusion)
    (root / "unet").mkdir(parents=True, exist_ok=True)
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "unet" / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {k: v.contiguous() for k, v in to_diffusers_state_dict(model).items()}
    save_file(tensors, str(root / "unet" / "diffusion_pytorch_model.safetensors"))
    from ddpm.checkpoint import _default_mode

    _default_mode(root / "unet" / "diffusion_pytorch_model.safetensors")
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": _diffusers_version(),
             "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root


def _diffusers_version() -> str:
    """The installed diffusers' version (recorded by diffusers in every folder it writes), else the
    oldest version this layout is known to load in."""
    try:
        from importlib.metadata import version

        return version("diffusers")
    except Exception:  # not installed: the folder is still valid
        return "0.25.0"
