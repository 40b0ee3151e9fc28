"""``ddpm convert tf|dit|diffusers|to-diffusers SRC OUT``: published weights <-> ddpm checkpoint dirs.

Thin layer over :mod:`ddpm.models.convert_tf`, :mod:`ddpm.models.convert_dit` and
:mod:`ddpm.models.convert_diffusers` (U-Nets, DiTs, autoencoders); the
checkpoint written is an ordinary ddpm checkpoint directory (``ddpm sample --ckpt OUT`` works).
OUT is written whole under a temporary name and renamed into place, so a failure leaves no partial
folder; an existing OUT is replaced only with ``--overwrite``. ``to-diffusers --push-to-hub REPO``
then uploads the folder with ``huggingface_hub``. See ``docs/network.md``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from ddpm.cli import common
from ddpm.config import Config, DiffusionConfig, SamplerConfig
from ddpm.errors import CheckpointError


def _overwrite(q) -> None:
    q.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                   help="replace OUT if it exists (default: refuse)")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("convert", help="import the authors' TF or diffusers weights (or export to diffusers)",
                              description=__doc__)
    sub = p.add_subparsers(dest="source", metavar="FORMAT", parser_class=type(p))
    sub.required = True

    q = sub.add_parser("tf", help="the authors' TensorFlow checkpoint (needs tensorflow) or an .npz of its variables")
    q.add_argument("src", help="checkpoint prefix (model.ckpt-NNN), its directory, or an .npz of TF variables")
    q.add_argument("out", help="checkpoint directory to write")
    q.add_argument("--preset", help="experiment preset the weights belong to (cifar10, celebahq256, lsun-church, ...); "
                                    "sets the network, the diffusion settings and the data resolution")
    q.add_argument("--resolution", type=common.positive_int, help="image size, when no --preset is given (the architecture is "
                                                  "read off the variables)")
    q.add_argument("--var-type", choices=("fixedlarge", "fixedsmall", "learned", "learned_range"),
                   help="variance (default: the preset's; without a preset fixedlarge, or learned when the "
                        "network outputs twice the image channels)")
    q.add_argument("--raw", action="store_true", help="take the raw variables instead of their EMA shadows")
    _overwrite(q)
    q.set_defaults(func=run_tf)

    q = sub.add_parser("dit", help="an official DiT checkpoint (facebookresearch/DiT .pt, read tensors-only, or "
                                   ".safetensors)")
    q.add_argument("src", help="DiT-XL-2-256x256.pt, a training ckpt.pt, or a .safetensors copy")
    q.add_argument("out", help="checkpoint directory to write")
    q.add_argument("--vae", help="the autoencoder whose latents the DiT models (diffusers AutoencoderKL folder, run "
                                 "dir or Hub id, e.g. stabilityai/sd-vae-ft-ema): writes a latent model that "
                                 "samples images; without it, the bare DiT on latents")
    q.add_argument("--num-heads", type=common.positive_int,
                   help="attention heads (default: the paper's for the width: 384->6, 768->12, 1024/1152->16)")
    q.add_argument("--weights", choices=("ema", "model"), default="ema",
                   help="which weights of a training checkpoint (default ema)")
    q.add_argument("--scale-factor", type=common.finite_float(0.0),
                   help="latent scale the DiT was trained with, when --vae publishes none")
    _overwrite(q)
    q.set_defaults(func=run_dit)

    q = sub.add_parser("diffusers", help="a diffusers UNet2DModel (e.g. google/ddpm-cifar10-32), DiT "
                                         "(facebook/DiT-XL-2-256) or AutoencoderKL (stabilityai/sd-vae-ft-mse) folder")
    q.add_argument("src", help="folder with config.json + diffusion_pytorch_model.safetensors|.bin "
                               "(or unet/, transformer/, vae/ and scheduler/ subfolders), or a Hub id "
                               "org/name[@revision]")
    q.add_argument("out", help="checkpoint directory to write")
    q.add_argument("--var-type", choices=("fixedlarge", "fixedsmall"),
                   help="sampling variance (default: the scheduler config's variance_type)")
    _overwrite(q)
    q.set_defaults(func=run_diffusers)

    q = sub.add_parser("to-diffusers", help="export a ddpm checkpoint as a diffusers folder (unet/ + scheduler/)")
    q.add_argument("src", help="run dir, checkpoint dir, .safetensors file or Hub id")
    q.add_argument("out", help="folder to write (a DDPMPipeline folder: model_index.json, unet/, scheduler/)")
    q.add_argument("--raw", action="store_true", help="export the raw instead of the EMA weights")
    q.add_argument("--push-to-hub", metavar="REPO",
                   help="then upload OUT to the Hugging Face Hub repository org/name (created if missing; "
                        "needs huggingface_hub and a login: `huggingface-cli login` or HF_TOKEN)")
    q.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository as private")
    _overwrite(q)
    q.set_defaults(func=run_to_diffusers)


def run_tf(args: argparse.Namespace) -> int:
    from ddpm.checkpoint import save_checkpoint
    from ddpm.models.convert_tf import convert_tf_state_dict, has_ema, infer_unet_config, read_tf_checkpoint, tf_step

    t0 = time.perf_counter()
    out = common.check_new_dir(args.out, args.overwrite)
    if args.preset is None and args.resolution is None:
        raise CheckpointError("give --preset (e.g. cifar10) or --resolution (e.g. 32) for the TF weights")
    if args.preset is not None:
        from ddpm.presets import get_preset

        get_preset(args.preset)  # an unknown name fails before the (large) file is read
    arrays = read_tf_checkpoint(args.src)
    ema = False if args.raw else None
    use_ema = has_ema(arrays) and not args.raw
    if args.preset is not None:
        cfg = get_preset(args.preset)
    else:
        model_cfg = infer_unet_config(arrays, args.resolution, ema=use_ema)
        # Twice the image channels out: the authors' learned (log-)variance, trained with the bound.
        learned = model_cfg.out_channels == 2 * model_cfg.in_channels
        var_type = args.var_type or ("learned" if learned else "fixedlarge")
        cfg = Config.for_network(model_cfg, DiffusionConfig(var_type=var_type, loss_type="kl" if learned else "mse"))
    if args.var_type and args.preset is not None:
        cfg = replace(cfg, diffusion=replace(cfg.diffusion, var_type=args.var_type))
    cfg = replace(cfg, imported_from=f"TF checkpoint {args.src}")
    state = convert_tf_state_dict(arrays, cfg.model, ema=ema)
    step = tf_step(arrays)
    weights = {"ema_state": state} if use_ema else {"model_state": state}
    save_checkpoint(out, config=cfg, step=step, **weights)
    n = sum(v.numel() for v in state.values())
    print(common.summary(f"converted {args.src} ({n:,} parameters, {'EMA' if use_ema else 'raw'} weights, step "
                         f"{step}, var_type {cfg.diffusion.var_type})", time.perf_counter() - t0, [out]))
    return 0


def run_diffusers(args: argparse.Namespace) -> int:
    from ddpm import hub
    from ddpm.checkpoint import save_checkpoint
    from ddpm.models.convert_diffusers import load_diffusers_folder

    t0 = time.perf_counter()
    out = common.check_new_dir(args.out, args.overwrite)
    model, diffusion = load_diffusers_folder(hub.resolve(args.src))
    arch = model.config.arch
    if args.var_type and arch == "unet":
        diffusion.var_type = args.var_type
    sampling = SamplerConfig()
    if arch in ("dit", "latent"):  # DiT's sampler: 250 ancestral steps, latents never clipped
        sampling = SamplerConfig(steps=250, clip_denoised=False)
    cfg = Config.for_network(model.config, diffusion, sampling=sampling, imported_from=f"diffusers folder {args.src}")
    # The published diffusers weights are EMA weights (DDPM's, DiT's): store them as such.
    save_checkpoint(out, config=cfg, step=0, ema_state=model.state_dict())
    n = sum(p.numel() for p in model.parameters())
    what = {"autoencoder": "autoencoder", "latent": "latent DiT + VAE", "dit": "DiT on latents (no VAE)"}.get(arch, arch)
    print(common.summary(f"converted {args.src} ({what}, {n:,} parameters, var_type {diffusion.var_type}, "
                         f"T={diffusion.num_timesteps})", time.perf_counter() - t0, [out]))
    return 0


def run_dit(args: argparse.Namespace) -> int:
    from ddpm.checkpoint import save_checkpoint
    from ddpm.models.convert_dit import (DIT_DIFFUSION, convert_official_state_dict, dit_config_from_official,
                                         read_official_checkpoint, wrap_latent)
    from ddpm.models.dit import DiT

    t0 = time.perf_counter()
    out = common.check_new_dir(args.out, args.overwrite)
    sd = read_official_checkpoint(args.src, weights=args.weights)
    dit_cfg = dit_config_from_official(sd, num_heads=args.num_heads)
    model = DiT(dit_cfg)
    model.load_state_dict(convert_official_state_dict(sd, dit_cfg))
    learned = dit_cfg.out_channels == 2 * dit_cfg.in_channels
    diffusion = replace(DIT_DIFFUSION) if learned else DiffusionConfig()
    if args.vae:
        model = wrap_latent(model, args.vae, scale_factor=args.scale_factor or 0.0)
    cfg = Config.for_network(model.config, diffusion, sampling=SamplerConfig(steps=250, clip_denoised=False),
                             imported_from=f"official DiT checkpoint {args.src}")
    save_checkpoint(out, config=cfg, step=0, ema_state=model.state_dict())
    n = sum(p.numel() for p in model.parameters())
    kind = f"latent model on {args.vae}" if args.vae else "DiT on latents; pass --vae to sample images"
    print(common.summary(f"converted {args.src} ({kind}, {n:,} parameters, {args.weights} weights, var_type "
                         f"{diffusion.var_type})", time.perf_counter() - t0, [out]))
    return 0


def run_to_diffusers(args: argparse.Namespace) -> int:
    from ddpm.checkpoint import load_checkpoint
    from ddpm.models.convert_diffusers import diffusers_kwargs_for, save_diffusers_folder
    from ddpm.outputs import atomic_dir

    t0 = time.perf_counter()
    out = common.check_new_dir(args.out, args.overwrite)
    if args.push_to_hub:
        from ddpm import hub

        hub.check_repo_id(args.push_to_hub)
    ckpt = load_checkpoint(args.src, use_ema=not args.raw)
    diffusers_kwargs_for(ckpt.model.config)  # an unexportable network fails before anything is written
    with atomic_dir(out, overwrite=args.overwrite) as tmp:
        save_diffusers_folder(ckpt.model, ckpt.config.diffusion, tmp)
    url = None
    if args.push_to_hub:
        from ddpm import hub

        url = hub.upload(out, args.push_to_hub, private=args.private,
                         message=f"ddpm export of {args.src} (step {ckpt.step}, {ckpt.weights} weights)")
    print(common.summary(f"exported {args.src} (step {ckpt.step}, {ckpt.weights} weights) as a diffusers "
                         "DDPMPipeline folder", time.perf_counter() - t0, [out, url]))
    return 0
