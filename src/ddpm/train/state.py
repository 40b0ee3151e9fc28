"""The trainer's resumable state in a checkpoint: packing it, and reading it back only once it checks.

:func:`pack_train_state` / :func:`restore_train_state` turn the optimizer, the random streams and the
timestep sampler into (tensors for ``train_state.safetensors``, JSON for ``train_state.json``) and back.
:func:`read_resume_state` reads one checkpoint directory for ``--resume`` and checks everything a resume
would use — manifest and hashes, weights against the run's network (keys, shapes, finite values),
optimizer moments against the parameters, the random states — before any of it touches the trainer,
so that a damaged checkpoint is skipped (see :func:`ddpm.checkpoint.newest_usable`) instead of
half-loaded.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm import checkpoint as ckpt
from ddpm.errors import CheckpointError

_REQUIRED_JSON = ("step", "ema_initialized", "optimizer_param_groups", "rng_python", "rng_numpy")


def pack_train_state(optimizer, generators: dict[str, torch.Generator], sampler_state: dict,
                     **fields) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What exact resume needs, as (tensors for ``train_state.safetensors``, JSON for ``train_state.json``).

    Tensors: optimizer moments as ``optim.<param index>.<name>``, the named generators and the global
    CPU/CUDA RNG as ``rng.<name>``, the timestep sampler's tensors as ``sampler.<name>``. JSON: the
    optimizer's param groups, the sampler's other values, Python's and NumPy's RNG, and ``fields``.
    """
    tensors: dict[str, torch.Tensor] = {"rng.torch_cpu": torch.get_rng_state()}
    tensors.update({f"rng.{name}": g.get_state() for name, g in generators.items()})
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"optim.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    sampler_json = {}
    for k, v in sampler_state.items():
        if torch.is_tensor(v):
            tensors[f"sampler.{k}"] = v
        else:
            sampler_json[k] = v
    py, np_state = random.getstate(), np.random.get_state()
    js = {
        **fields,
        "optimizer_param_groups": opt["param_groups"],
        "timestep_sampler": sampler_json,
        "rng_python": [py[0], list(py[1]), py[2]],
        "rng_numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, js


def restore_train_state(tensors: dict[str, torch.Tensor], js: dict[str, Any], optimizer,
                        generators: dict[str, torch.Generator]) -> dict:
    """Undo :func:`pack_train_state` into ``optimizer``, ``generators`` and the global RNGs; returns the
    timestep sampler's state dict."""
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    groups = js["optimizer_param_groups"]
    current = optimizer.state_dict()["param_groups"]
    for g, c in zip(groups, current):  # device-specific flags follow this run, not the saved one
        for key in ("foreach", "fused", "capturable", "differentiable"):
            if key in c:
                g[key] = c[key]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch_cpu"])
    for name, g in generators.items():
        g.set_state(tensors[f"rng.{name}"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    p = js["rng_python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    n = js["rng_numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    sampler_state = dict(js.get("timestep_sampler", {}))
    sampler_state.update({k[len("sampler."):]: v for k, v in tensors.items() if k.startswith("sampler.")})
    return sampler_state


def read_resume_state(directory: Path, config, parameters: list[torch.Tensor], generators: tuple[str, ...]) -> dict:
    """Everything a resume from ``directory`` needs, checked against this run (``config``, the model's
    ``parameters`` in optimizer order, the names of its generators); raises CheckpointError naming the
    first problem. Returns {"directory", "model", "ema", "tensors", "json"}."""
    tensors, js = ckpt.load_train_state(directory)  # verifies the manifest and hashes first
    states = {}
    for kind in ("model", "ema"):
        path = directory / f"{kind}.safetensors"
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory} has no {kind} weights, which a resume needs")
        states[kind], _ = ckpt.read_weights(path)
        ckpt.check_weights(states[kind], config, path)
    missing = [k for k in _REQUIRED_JSON if k not in js]
    need = ["rng.torch_cpu", *(f"rng.{g}" for g in generators)]
    missing += [k for k in need if k not in tensors]
    if missing:
        raise CheckpointError(f"checkpoint {directory} has an incomplete training state (no {missing[0]!r}); "
                              "use an earlier checkpoint")
    if int(js["step"]) != int(directory.name.split("_")[-1]):
        raise CheckpointError(f"checkpoint {directory} holds the state of step {js['step']}, not of its name")
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            i = int(idx)
            if i >= len(parameters) or (v.dim() > 0 and tuple(v.shape) != tuple(parameters[i].shape)):
                raise CheckpointError(f"checkpoint {directory}: optimizer state {k!r} does not fit the network; "
                                      "use an earlier checkpoint")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"checkpoint {directory}: training state {k!r} is not finite; "
                                  "use an earlier checkpoint")
    return {"directory": directory, "model": states["model"], "ema": states["ema"], "tensors": tensors, "json": js}


__all__ = ["pack_train_state", "restore_train_state", "read_resume_state"]
