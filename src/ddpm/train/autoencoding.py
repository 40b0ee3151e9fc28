"""The ``autoencoder`` training objective: the KL autoencoder of latent diffusion (Rombach et al. 2022,
§3 and App. G; ``ldm/modules/losses/contperceptual.py``), trained by the project's Trainer.

Per example: the reconstruction error summed over pixels (L1 as LDM, or L2) of a decoding of
z = mean + std·ε (ε is the trainer's noise draw, latent-shaped for autoencoders), plus ``kl_weight`` ×
KL(q(z|x) ‖ N(0, I)) summed over the latent (LDM: 1e-6). LDM's learned output log-variance is left
out: their optimizer never updates it (it stays 0, so it changes nothing).

What is omitted, and why: LDM adds an LPIPS perceptual term (needs VGG weights trained on ImageNet,
not available offline) and, after ``disc_start`` steps, a patch-GAN hinge loss with an adaptive weight
(needs a second optimizer, the discriminator, and tuning). Both are pluggable: ``extra_loss`` names a
``module:Class`` whose instance maps (x, x_rec) to a (B,) per-example loss, added with
``extra_weight``; it may carry state (``state_dict``/``load_state_dict``) and an ``after_step(model)``
hook, which the objective forwards — enough to host a discriminator with its own optimizer.
"""

from __future__ import annotations

import importlib

from ddpm.errors import ConfigError
from ddpm.models.autoencoder import DiagonalGaussian
from ddpm.sampling.registry import Option
from ddpm.train.objectives import Objective


class AutoencoderObjective(Objective):
    name = "autoencoder"
    makes_samples = False
    options = (
        Option("reconstruction", "l1", "pixel loss summed over pixels: l1 (LDM) or l2", kind=str,
               choices=("l1", "l2")),
        Option("kl_weight", 1e-6, "weight of KL(q(z|x) || N(0, I)) (LDM: 1e-6)", low=0.0),
        Option("extra_loss", "", "module:Class of an extra loss(x, x_rec) -> (B,) (e.g. perceptual); "
                                 "empty: none", kind=str),
        Option("extra_weight", 1.0, "weight of extra_loss", low=0.0),
    )

    def __init__(self, config, diffusion, device, options: dict | None = None):
        super().__init__(config, diffusion, device, options)
        if getattr(config.model, "arch", None) != "autoencoder":
            raise ConfigError(f"train.objective=autoencoder trains model.arch=autoencoder, not "
                              f"{getattr(config.model, 'arch', '?')!r}")
        self.extra = _build_extra(self.opts["extra_loss"])

    def losses(self, model, x0, t, noise, model_kwargs):
        rec, moments = model(x0, noise=noise, return_moments=True)
        diff = rec.float() - x0.float()
        err = diff.abs() if self.opts["reconstruction"] == "l1" else diff.pow(2)
        rec_loss = err.flatten(1).sum(1)
        kl = DiagonalGaussian(moments.float()).kl()
        loss = rec_loss + self.opts["kl_weight"] * kl
        out = {"rec": rec_loss.detach(), "kl": kl.detach()}
        if self.extra is not None:
            extra = self.extra(x0, rec).float()
            loss = loss + self.opts["extra_weight"] * extra
            out["extra"] = extra.detach()
        out["loss"] = loss
        return out

    def after_step(self, model) -> None:
        if self.extra is not None and hasattr(self.extra, "after_step"):
            self.extra.after_step(model)

    def state_dict(self):
        if self.extra is not None and hasattr(self.extra, "state_dict"):
            return {f"extra.{k}": v for k, v in self.extra.state_dict().items()}
        return {}

    def load_state_dict(self, state):
        if self.extra is not None and hasattr(self.extra, "load_state_dict"):
            self.extra.load_state_dict({k[len("extra."):]: v for k, v in state.items() if k.startswith("extra.")})


def _build_extra(spec: str):
    if not spec:
        return None
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"train.objective_options.extra_loss must look like package.module:Class, got {spec!r}")
    try:
        return getattr(importlib.import_module(module), attr)()
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"train.objective_options.extra_loss {spec!r} cannot be loaded ({e})") from None
