"""Reference outputs of every sampling path on small random networks, for regression checks.

``python tests/golden_sampling.py OUT.npz`` writes them; ``tests/test_golden_sampling.py`` compares the
current code against ``tests/data/golden_sampling.npz``, which was written before the sampler registry
replaced the hand-written dispatch (so the registry provably changed no result). Every entry uses only
public entry points that existed before and after that change.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

T = 20


def _net(num_classes=None, out_channels=1, seed=0):
    from ddpm.models.unet import UNetConfig
    from ddpm.models.unet import UNet

    torch.manual_seed(seed)
    model = UNet(UNetConfig(in_channels=1, out_channels=out_channels, ch=64, ch_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(4,), dropout=0.0, resolution=8, num_classes=num_classes))
    with torch.no_grad():  # re-draw the authors' near-zero layers so outputs depend on x, t and y
        g = torch.Generator().manual_seed(seed + 100)
        for name, p in model.named_parameters():
            if name.endswith(("conv2.weight", "proj_out.weight", "conv_out.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _diffusion(**kw):
    from ddpm.config import DiffusionConfig

    return DiffusionConfig(num_timesteps=T, beta_end=0.3, **kw).build()


def compute() -> dict[str, np.ndarray]:
    from ddpm.sampling.api import generate

    torch.set_num_threads(1)
    out: dict[str, np.ndarray] = {}
    eps = _net()
    d = _diffusion()

    def gen(key, model, diffusion, n=5, **kw):
        out[key] = generate(model, diffusion, n, batch_size=kw.pop("batch_size", 3), seed=kw.pop("seed", 7),
                            **kw).numpy()

    gen("ddpm_full", eps, d)
    for spacing in ("uniform", "quadratic", "even"):
        gen(f"ddpm_k7_{spacing}", eps, d, steps=7, spacing=spacing)
        gen(f"ddim_k7_{spacing}", eps, d, sampler="ddim", steps=7, spacing=spacing)
    gen("ddim_full", eps, d, sampler="ddim")
    for eta in (0.5, 1.0):
        gen(f"ddim_k5_eta{eta}", eps, d, sampler="ddim", steps=5, eta=eta)
        gen(f"ddim_full_eta{eta}", eps, d, sampler="ddim", eta=eta)
    gen("ddpm_noclip", eps, d, clip_denoised=False)
    gen("ddim_noclip", eps, d, sampler="ddim", steps=4, clip_denoised=False)
    gen("ddpm_rank1of2", eps, d, n=5, rank=1, world_size=2)
    gen("ddpm_batch1", eps, d, n=3, batch_size=1)
    for mean in ("xstart", "xprev"):
        gen(f"ddpm_{mean}", eps, _diffusion(mean_type=mean))
        gen(f"ddim_{mean}", eps, _diffusion(mean_type=mean), sampler="ddim", steps=6, eta=0.3)
    for var in ("fixedsmall",):
        gen(f"ddpm_{var}", eps, _diffusion(var_type=var))
    learned = _net(out_channels=2, seed=1)
    for var in ("learned", "learned_range"):
        dv = _diffusion(var_type=var, loss_type="kl")
        gen(f"ddpm_{var}", learned, dv)
        gen(f"ddpm_k6_{var}", learned, dv, steps=6, spacing="even")
        gen(f"ddim_{var}", learned, dv, sampler="ddim", steps=6)
    cond = _net(num_classes=3, seed=2)
    gen("cond_null", cond, d)
    gen("cond_class2", cond, d, class_labels=2)
    gen("cond_list_w2", cond, d, class_labels=[0, 1, 2, 0, 1], guidance=2.0)
    gen("cond_ddim_w1", cond, d, sampler="ddim", steps=5, class_labels=1, guidance=1.0)
    gen("cond_ddim_eta_w3", cond, d, sampler="ddim", steps=5, eta=1.0, class_labels=[2, 2, 1, 1, 0], guidance=3.0)
    cond_learned = _net(num_classes=3, out_channels=2, seed=3)
    gen("cond_learned_w2", cond_learned, _diffusion(var_type="learned_range", loss_type="hybrid"),
        steps=8, class_labels=1, guidance=2.0)

    from ddpm.accel import FastPath

    gen("fast_bf16", eps, d, fast=FastPath(channels_last=True, precision="bf16"))
    gen("fast_cl_ddim", eps, d, sampler="ddim", steps=5, fast=FastPath(channels_last=True, precision="fp32"))

    # The paper's figure experiments and DDIM inversion.
    from ddpm.sampling.ancestral import interpolate, progressive_samples, shared_latent_samples
    from ddpm.sampling.ddim import ddim_decode, ddim_invert

    g = torch.Generator().manual_seed(3)
    prog = progressive_samples(d, eps, (2, 1, 8, 8), every=4, generator=g)
    out["progressive_pred"] = prog["pred_xstart"].numpy()
    g = torch.Generator().manual_seed(4)
    shared = shared_latent_samples(d, eps, (3, 1, 8, 8), share_until=10, generator=g)
    out["shared_samples"] = shared["samples"].numpy()
    x0 = torch.from_numpy(out["ddpm_full"][:2])
    g = torch.Generator().manual_seed(5)
    interp = interpolate(d, eps, x0[:1], x0[1:], t=12, lambdas=[0.25, 0.5], generator=g, chunk=1)
    out["interpolate"] = interp["samples"].numpy()
    z = ddim_invert(d, eps, x0)
    out["ddim_invert"] = z.numpy()
    out["ddim_decode"] = ddim_decode(d, eps, z).numpy()
    return out


if __name__ == "__main__":
    np.savez(sys.argv[1], **compute())
    print(f"wrote {sys.argv[1]}")
