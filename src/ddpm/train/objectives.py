"""What a training step minimises: the registry of training objectives (``train.objective``).

The :class:`~ddpm.train.trainer.Trainer` owns everything that makes a run exact and resumable — data
order, the per-step draws of t, ε, flips and label drop-out, the optimizer, clipping, warm-up, EMA,
checkpoints, DDP. An objective only turns one batch into per-example losses. The paper's objective
(L_simple, the true bound, or improved DDPM's hybrid; Ho et al. 2020, Algorithm 1 and Eq. 14) is
``diffusion``; a classifier on noised images, a distillation student or an autoencoder is another
entry here, so each trains with the same loop, run directories and exact resume.

An objective is built once per trainer as ``cls(config, diffusion, device)`` and provides:

- ``losses(model, x0, t, noise, model_kwargs) -> dict`` with ``loss`` of shape (B,) (plus any parts to
  log); ``x0`` in [−1, 1], ``t`` the timesteps drawn by the run's timestep sampler, ``noise`` a standard
  normal tensor shaped like ``x0`` drawn from the run's generator, ``model_kwargs`` holds ``y`` for
  class-conditional models (already dropped to the null label at ``train.class_dropout``);
- ``after_step(model)`` — called after each optimizer update and EMA update (e.g. to move a target
  network);
- ``state_dict()`` / ``load_state_dict(state)`` — extra state exact resume needs (tensors are stored in
  ``train_state.safetensors``, other values in ``train_state.json``);
- ``makes_samples`` — whether the trainer's periodic sample grids apply;
- ``options`` — :class:`ddpm.sampling.registry.Option` s for ``train.objective_options``, checked when
  the config is validated.

Adding an objective is one class plus one line in :data:`OBJECTIVES` (docs/extending.md).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from ddpm.errors import ConfigError

# name -> "module:Class"; imported on first use.
OBJECTIVES: dict[str, str] = {
    "diffusion": "ddpm.train.objectives:DiffusionObjective",
    "autoencoder": "ddpm.train.autoencoding:AutoencoderObjective",
    "classifier": "ddpm.train.classifier:ClassifierObjective",
    "progressive-distillation": "ddpm.train.progressive:ProgressiveDistillationObjective",
    "consistency-distillation": "ddpm.train.consistency:ConsistencyDistillationObjective",
    "consistency-training": "ddpm.train.consistency:ConsistencyTrainingObjective",
}


class Objective:
    """Base class; see the module docstring for the contract."""

    name = "objective"
    makes_samples = True
    options: tuple = ()

    def __init__(self, config, diffusion, device, options: dict | None = None):
        self.config = config
        self.diffusion = diffusion
        self.device = torch.device(device)
        self.opts = resolve_options(type(self), config.train.objective_options if options is None else options)

    def losses(self, model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
               model_kwargs: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self, model) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class DiffusionObjective(Objective):
    """The diffusion's own loss (``diffusion.loss_type``: L_simple, the bound or hybrid). For a latent
    model (``model.arch = "latent"``) the batch is first encoded to latents (:mod:`ddpm.train.latent`)."""

    name = "diffusion"

    def __init__(self, config, diffusion, device, options: dict | None = None):
        super().__init__(config, diffusion, device, options)
        if getattr(config.model, "arch", None) == "autoencoder":
            raise ConfigError("model.arch=autoencoder trains with train.objective=autoencoder")
        from ddpm.train.latent import latent_encoder

        self.encoder = latent_encoder(config, device)

    def losses(self, model, x0, t, noise, model_kwargs):
        if self.encoder is not None:
            x0 = self.encoder(model, x0)
        return self.diffusion.training_losses(model, x0, t, noise=noise, model_kwargs=model_kwargs)

    def state_dict(self) -> dict[str, Any]:
        return self.encoder.state_dict() if self.encoder is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.encoder is not None:
            self.encoder.load_state_dict(state)


def get_objective(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown train.objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    module, attr = OBJECTIVES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def resolve_options(cls: type[Objective], given: dict | None) -> dict[str, Any]:
    """The objective's option defaults overlaid with ``given``, each checked; unknown names are errors."""
    given = dict(given or {})
    known = {o.name: o for o in cls.options}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"train.objective {cls.name!r} has no option {', '.join(unknown)} "
                          f"(its options: {', '.join(known) or 'none'})")
    return {k: o.check(given[k], f"objective {cls.name}") if k in given else o.default for k, o in known.items()}


def build_objective(config, diffusion, device) -> Objective:
    return get_objective(config.train.objective)(config, diffusion, device)


def pack_state(objective: Objective) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An objective's state split into (tensors under ``objective.<key>``, the JSON-able rest)."""
    tensors, js = {}, {}
    for k, v in objective.state_dict().items():
        if torch.is_tensor(v):
            tensors[f"objective.{k}"] = v
        else:
            js[k] = v
    return tensors, js


def unpack_state(tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> dict[str, Any]:
    state = dict(js)
    state.update({k[len("objective."):]: v for k, v in tensors.items() if k.startswith("objective.")})
    return state


__all__ = ["OBJECTIVES", "Objective", "DiffusionObjective", "build_objective", "get_objective", "pack_state",
           "unpack_state", "resolve_options"]
