"""Import DiT weights: the official ``facebookresearch/DiT`` checkpoints and diffusers'
``DiTTransformer2DModel`` folders (``facebook/DiT-XL-2-256``, …).

Official files (``DiT-XL-2-256x256.pt``: a plain state dict of EMA weights; the training script's
``ckpt.pt``: {"model", "ema", "opt", "args"}) are pickles: they are read only with
``torch.load(weights_only=True)`` (``argparse.Namespace`` allowed for the training ``args``), or from a
safetensors copy. Our module names are the official ones, so the conversion is a check of names and
shapes; the architecture is read off the shapes, except the head count (width → heads of the paper's
Table 1, else ``num_heads=``).

diffusers' layout differs in three ways, all handled here:
- every block keeps its own copy of the timestep/label embedder (``transformer_blocks.i.norm1.emb``):
  their converter copies the official embedder into each; we require the copies to be identical and
  take one (else CheckpointError: such a model is not a DiT);
- q, k, v are separate linears (``attn1.to_q|to_k|to_v``): concatenated into ``qkv``;
- two numerical variants: timestep frequencies divided by half − 1 (``downscale_freq_shift=1``) where
  the official code divides by half, and the LayerNorm before the MLP with ε = ``norm_eps`` (1e-5 by
  default) where the official one has 1e-6. The imported config records both
  (``timestep_freq_shift``, ``mlp_norm_eps``), so the network computes what the folder computed.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch

from ddpm.config import DiffusionConfig
from ddpm.errors import CheckpointError, ConfigError
from ddpm.models.convert_diffusers import remap_diffusers_weights
from ddpm.models.dit import DiT, DiTConfig

# Paper Table 1: width -> heads of DiT-S/B/L/XL (head width 64, 64, 64, 72).
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}
# What the official DiT runs: improved DDPM's learned-range variances on the linear schedule.
DIT_DIFFUSION = DiffusionConfig(var_type="learned_range", loss_type="hybrid")


# ------------------------------------------------------------------------------------ official files
def read_official_checkpoint(path: str | Path, weights: str = "ema") -> dict[str, torch.Tensor]:
    """The DiT state dict in an official ``.pt`` (safely, ``weights_only``) or a ``.safetensors`` file;
    ``weights`` picks "ema" or "model" from a training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; give a DiT .pt or .safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals, truncation, wrong format
        first = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise CheckpointError(f"cannot read {path} as tensors only ({first}); DiT checkpoints are loaded "
                              "with torch.load(weights_only=True), never by running pickle code") from None
    if isinstance(sd, dict) and "x_embedder.proj.weight" not in sd and weights in sd:
        sd = sd[weights]
    if not isinstance(sd, dict) or "x_embedder.proj.weight" not in sd:
        raise CheckpointError(f"{path} holds no DiT state dict (no x_embedder.proj.weight)")
    return {k: v for k, v in sd.items() if torch.is_tensor(v)}


def dit_config_from_official(sd: dict[str, torch.Tensor], num_heads: int | None = None) -> DiTConfig:
    """The DiT an official state dict describes (shapes), with ``num_heads`` or the paper's for the width."""
    w = sd["x_embedder.proj.weight"]
    hidden, in_ch, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    if num_heads is None:
        if hidden not in HEADS_BY_WIDTH:
            raise ConfigError(f"DiT width {hidden} is none of the paper's ({sorted(HEADS_BY_WIDTH)}); give the "
                              "number of attention heads (--num-heads)")
        num_heads = HEADS_BY_WIDTH[hidden]
    tokens = int(sd["pos_embed"].shape[1]) if "pos_embed" in sd else None
    if tokens is None or int(round(tokens ** 0.5)) ** 2 != tokens:
        raise CheckpointError("the DiT state dict has no square pos_embed; cannot tell the input size")
    table = sd.get("y_embedder.embedding_table.weight")
    return DiTConfig(
        in_channels=in_ch,
        out_channels=int(sd["final_layer.linear.weight"].shape[0]) // (patch * patch),
        resolution=int(round(tokens ** 0.5)) * patch,
        patch_size=patch, hidden_size=hidden, depth=depth, num_heads=int(num_heads),
        mlp_ratio=int(sd["blocks.0.mlp.fc1.weight"].shape[0]) / hidden,
        # the official table has num_classes + 1 rows (the last is the drop-out / null label)
        num_classes=int(table.shape[0]) - 1 if table is not None else None,
        frequency_embedding_size=int(sd["t_embedder.mlp.0.weight"].shape[1]),
    )


def convert_official_state_dict(sd: dict[str, torch.Tensor], config: DiTConfig) -> dict[str, torch.Tensor]:
    """Check an official state dict against ``DiT(config)`` (names and shapes); float32 copies."""
    return _match(sd, config, lambda name: name, "official DiT")


# ------------------------------------------------------------------------------------ diffusers
def dit_config_from_diffusers(cfg: dict[str, Any]) -> DiTConfig:
    """The :class:`DiTConfig` of a ``DiTTransformer2DModel`` (or ``Transformer2DModel`` in DiT mode) config."""
    name = cfg.get("_class_name", "DiTTransformer2DModel")
    if name not in ("DiTTransformer2DModel", "Transformer2DModel"):
        raise ConfigError(f"expected a diffusers DiTTransformer2DModel config, got {name!r}")
    required = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "attention_bias": True,
                "norm_elementwise_affine": False}
    for key, want in required.items():
        if cfg.get(key, want) != want:
            raise ConfigError(f"diffusers config has {key}={cfg.get(key)!r}; DiT needs {want!r}")
    if cfg.get("patch_size") is None or cfg.get("num_embeds_ada_norm") is None:
        raise ConfigError("diffusers config lacks patch_size or num_embeds_ada_norm; it is not a DiT")
    heads, head_dim = int(cfg.get("num_attention_heads", 16)), int(cfg.get("attention_head_dim", 72))
    size = cfg.get("sample_size", 32)
    in_ch = int(cfg.get("in_channels", 4))
    return DiTConfig(
        in_channels=in_ch, out_channels=int(cfg.get("out_channels") or in_ch),
        resolution=int(size[0] if isinstance(size, (list, tuple)) else size),
        patch_size=int(cfg["patch_size"]), hidden_size=heads * head_dim, depth=int(cfg.get("num_layers", 28)),
        num_heads=heads, num_classes=int(cfg["num_embeds_ada_norm"]),
        timestep_freq_shift=1, mlp_norm_eps=float(cfg.get("norm_eps", 1e-5)),
    )


_DIFFUSERS_BLOCK = {
    "adaLN_modulation.1": "norm1.linear", "attn.proj": "attn1.to_out.0",
    "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2",
}
_DIFFUSERS_TOP = {
    "x_embedder.proj": "pos_embed.proj", "final_layer.adaLN_modulation.1": "proj_out_1",
    "final_layer.linear": "proj_out_2",
    "t_embedder.mlp.0": "transformer_blocks.0.norm1.emb.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "transformer_blocks.0.norm1.emb.timestep_embedder.linear_2",
    "y_embedder.embedding_table": "transformer_blocks.0.norm1.emb.class_embedder.embedding_table",
}


def convert_diffusers_dit_state_dict(sd: dict[str, torch.Tensor], config: DiTConfig) -> dict[str, torch.Tensor]:
    """A ``DiTTransformer2DModel`` state dict -> ours: q|k|v fused, the per-block embedder copies checked
    identical (CheckpointError otherwise) and taken once."""
    sd = dict(sd)
    for key in [k for k in sd if re.match(r"transformer_blocks\.(\d+)\.norm1\.emb\.", k)]:
        first = re.sub(r"^transformer_blocks\.\d+\.", "transformer_blocks.0.", key)
        if key != first:
            if first not in sd or not torch.equal(sd[key], sd[first]):
                raise CheckpointError(f"diffusers DiT block copies of the timestep/label embedding differ ({key} vs "
                                      f"{first}); DiT has one embedding shared by all blocks, so this folder is not "
                                      "a DiT")
            del sd[key]
    for i in range(config.depth):
        p = f"transformer_blocks.{i}.attn1."
        for leaf in ("weight", "bias"):
            parts = [p + f"to_{n}.{leaf}" for n in "qkv"]
            if all(k in sd for k in parts):
                sd[p + f"qkv.{leaf}"] = torch.cat([sd.pop(k) for k in parts], dim=0)

    def name(ours: str) -> str:
        m = re.match(r"blocks\.(\d+)\.(.*)\.(weight|bias)$", ours)
        if m:
            i, mod, leaf = m.groups()
            return f"transformer_blocks.{i}.{_DIFFUSERS_BLOCK.get(mod, mod.replace('attn.', 'attn1.'))}.{leaf}"
        mod, leaf = ours.rsplit(".", 1)
        return f"{_DIFFUSERS_TOP.get(mod, mod)}.{leaf}"

    return _match(sd, config, name, "diffusers DiT")


def _match(sd, config: DiTConfig, name_fn, what: str) -> dict[str, torch.Tensor]:
    """Our DiT state dict from ``sd`` through the shared remapper; the fixed position embedding, which
    diffusers does not store, is recomputed when absent."""
    with torch.device("meta"):
        reference = DiT(config).state_dict()
    fixed = {}
    if "pos_embed" not in sd:
        from ddpm.models.dit import sincos_pos_embed_2d

        fixed["pos_embed"] = sincos_pos_embed_2d(config.hidden_size, config.resolution // config.patch_size)[None]
    reference = {k: v for k, v in reference.items() if k not in fixed}
    return {**remap_diffusers_weights(sd, reference, name_fn, f"{what} weights"), **fixed}


def dit_folder(path: str | Path) -> Path | None:
    """The folder with the DiT transformer's ``config.json`` (``path`` or ``path/transformer``), or None."""
    root = Path(path)
    for d in (root, root / "transformer"):
        cfg = d / "config.json"
        if cfg.is_file():
            try:
                if json.loads(cfg.read_text()).get("_class_name") in ("DiTTransformer2DModel", "Transformer2DModel"):
                    return d
            except json.JSONDecodeError:
                raise CheckpointError(f"{cfg} is not valid JSON") from None
    return None


def load_diffusers_dit(path: str | Path):
    """A diffusers DiT folder -> (network, DiffusionConfig). A pipeline folder with ``vae/`` becomes a
    latent model (:mod:`ddpm.models.latent`) on that VAE; a bare transformer folder a DiT on latents."""
    from ddpm.models.convert_diffusers import WEIGHT_NAMES, read_diffusers_weights

    folder = dit_folder(path)
    if folder is None:
        raise CheckpointError(f"{path} holds no diffusers DiTTransformer2DModel (config.json, directly or in "
                              "transformer/)")
    cfg = dit_config_from_diffusers(json.loads((folder / "config.json").read_text()))
    weights = next((folder / w for w in WEIGHT_NAMES if (folder / w).is_file()), None)
    if weights is None:
        raise CheckpointError(f"no {' or '.join(WEIGHT_NAMES)} in {folder}; download the weights file there")
    dit = DiT(cfg)
    dit.load_state_dict(convert_diffusers_dit_state_dict(read_diffusers_weights(weights), cfg))
    diffusion = _diffusion_for(cfg, Path(path))
    root = Path(path)
    if folder != root and (root / "vae" / "config.json").is_file():
        return wrap_latent(dit, str(root / "vae")), diffusion
    return dit.eval(), diffusion


def _diffusion_for(cfg: DiTConfig, root: Path) -> DiffusionConfig:
    """The pipeline's scheduler settings, with learned-range variances when the DiT learns Σ (diffusers
    keeps them only implicitly: its DiT pipeline drops the variance half)."""
    from ddpm.models.convert_diffusers import diffusion_config_from_scheduler

    sched = root / "scheduler" / "scheduler_config.json"
    base = json.loads(sched.read_text()) if sched.is_file() else {}
    base = {k: v for k, v in base.items() if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                                   "prediction_type")}
    d = diffusion_config_from_scheduler(base)
    if cfg.out_channels == 2 * cfg.in_channels:
        d.var_type, d.loss_type = "learned_range", "hybrid"
    return d


def wrap_latent(dit: DiT, vae: str, scale_factor: float = 0.0):
    """A latent model of ``dit`` on the autoencoder at ``vae`` (diffusers folder, run dir or Hub id),
    with the VAE's weights and its published scale (or ``scale_factor``); in eval mode."""
    from ddpm.checkpoint import load_checkpoint
    from ddpm.models.latent import LatentConfig, LatentDiffusion

    ae = load_checkpoint(vae)
    if ae.config.model.arch != "autoencoder":
        raise ConfigError(f"--vae {vae} is a {ae.config.model.arch!r} checkpoint, not an autoencoder")
    factor = ae.config.model.factor
    if not (scale_factor or ae.config.model.scaling_factor):
        raise ConfigError(f"the autoencoder {vae} publishes no latent scale; give the one the DiT was trained "
                          "with (--scale-factor)")
    cfg = LatentConfig(autoencoder=str(vae), backbone=dit.config, num_classes=dit.config.num_classes,
                       scale_factor=float(scale_factor),
                       in_channels=ae.config.model.in_channels, resolution=dit.config.resolution * factor)
    model = LatentDiffusion(cfg)
    model.denoiser.load_state_dict(dit.state_dict())
    model.autoencoder.load_state_dict(ae.model.state_dict())
    return model.eval()
