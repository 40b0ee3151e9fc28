"""Training a latent model (:mod:`ddpm.models.latent`): each rank encodes its own slice of the global
batch on the fly, z = scale·(mean + std·ε′), before the diffusion loss sees it (as LDM and DiT, which
encode a posterior sample every step).

ε′ is drawn for the whole global batch from a generator seeded by ``train.seed`` and owned by the
objective (its state is saved in every checkpoint), and each rank takes its rows, so a latent run
resumes bit for bit and does not depend on the number of ranks — the trainer's own rule for t and ε.
Encoding on the fly costs one encoder pass per image and step; a cached latent dataset would avoid it
but fixes one posterior sample per image, which LDM does not.
"""

from __future__ import annotations

import torch

from ddpm import distributed
from ddpm.models.registry import noise_shape


class LatentBatchEncoder:
    def __init__(self, config, device):
        self.shape = noise_shape(config.model)
        self.batch = config.train.batch_size
        info = distributed.env_info()
        b = self.batch // info.world_size
        self.lo, self.hi = info.rank * b, (info.rank + 1) * b
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device).manual_seed(config.train.seed + 2)

    def __call__(self, model, x0: torch.Tensor) -> torch.Tensor:
        from ddpm.models.latent import find_latent_model

        noise = torch.randn((self.batch, *self.shape), generator=self.gen, device=self.device)[self.lo:self.hi]
        return find_latent_model(model).encode_images(x0, noise=noise[: x0.shape[0]])

    def state_dict(self) -> dict:
        return {"latent_gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "latent_gen" in state:
            self.gen.set_state(state["latent_gen"])


def latent_encoder(config, device) -> LatentBatchEncoder | None:
    """The batch encoder of a latent model's run, None for pixel models."""
    return LatentBatchEncoder(config, device) if getattr(config.model, "arch", None) == "latent" else None
