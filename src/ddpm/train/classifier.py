"""The ``classifier`` training objective: cross-entropy of a noise-aware classifier on noised images.

Dhariwal & Nichol (2021, §4.1) train p_φ(y | x_t, t) on x_t = q_sample(x_0, t, ε) with t drawn as for
the diffusion model (guided-diffusion's ``classifier_train.py`` with ``noised=True``); its gradient
∇_{x_t} log p_φ(y | x_t, t) then guides sampling (:mod:`ddpm.sampling.classifier_guidance`). The
trainer's t, ε and labels are used as they come, so the run has the trainer's exact resume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpm.errors import ConfigError
from ddpm.sampling.registry import Option
from ddpm.train.objectives import Objective


class ClassifierObjective(Objective):
    """Per-example cross-entropy (``loss``) and top-1 agreement (``accuracy``) on x_t."""

    name = "classifier"
    makes_samples = False
    options = (Option("noised", True, "train on x_t = q_sample(x_0, t, ε) (false: on clean x_0 at t = 0)",
                      kind=bool),)

    def __init__(self, config, diffusion, device, options=None):
        super().__init__(config, diffusion, device, options)
        if getattr(config.model, "arch", None) != "classifier":
            raise ConfigError("train.objective 'classifier' trains model.arch 'classifier'; set --set "
                              "model.arch=classifier or use the digits-classifier preset")
        if config.train.class_dropout > 0:
            raise ConfigError("train.objective 'classifier' needs every label (they are its targets): set "
                              "train.class_dropout=0")

    def losses(self, model, x0, t, noise, model_kwargs):
        y = model_kwargs.get("y")
        if y is None:
            raise ConfigError("the classifier objective needs class labels: set data.class_labels=true")
        if self.opts["noised"]:
            x_t = self.diffusion.q_sample(x0, t, noise=noise)
        else:
            x_t, t = x0, torch.zeros_like(t)
        logits = model(x_t, t).float()
        return {"loss": F.cross_entropy(logits, y, reduction="none"),
                "accuracy": (logits.argmax(dim=1) == y).float()}


__all__ = ["ClassifierObjective"]
