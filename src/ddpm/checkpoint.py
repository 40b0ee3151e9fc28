"""Checkpoints: safetensors weights + JSON state, written atomically, loaded without unpickling.

A run directory::

    RUN/config.json  metrics.jsonl  samples/step_0005000.png
    RUN/checkpoints/latest                 -> text "step_0005000" (written last, atomically)
    RUN/checkpoints/step_0005000/model.safetensors       raw weights   } config JSON, step and kind
    RUN/checkpoints/step_0005000/ema.safetensors         EMA weights   } in the safetensors metadata
    RUN/checkpoints/step_0005000/train_state.safetensors optimizer moments, RNG states
    RUN/checkpoints/step_0005000/train_state.json        step, python/numpy RNG, samplers, data position
    RUN/checkpoints/step_0005000/manifest.json           file sizes; written last = "complete"

Every checkpoint is first written to ``checkpoints/.tmp-step_X``, each file and the directory are
fsync'ed, then the directory is renamed into place and the parent fsync'ed. A crash therefore leaves
either the old state or the new one, plus perhaps a ``.tmp-*`` directory that loading ignores.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ddpm.config import Config
from ddpm.errors import CheckpointError, UserError

FORMAT = "ddpm-checkpoint/1"
MANIFEST = "manifest.json"
WEIGHT_FILES = ("ema.safetensors", "model.safetensors")
_KILL_ENV = "DDPM_TEST_KILL_DURING_CHECKPOINT"  # test hook: SIGKILL mid-write at this step


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


@dataclass
class LoadedCheckpoint:
    """A network ready for sampling (eval mode) with everything needed to use it."""

    model: torch.nn.Module
    diffusion: Any
    config: Config
    step: int
    path: Path | None = None
    weights: str = "ema"  # which weights the model holds: "ema" or "model"

    def __repr__(self) -> str:  # the dataclass default would print the whole module tree
        m = self.config.model
        n = sum(p.numel() for p in self.model.parameters())
        return (f"LoadedCheckpoint({self.path}: {m.arch} {'x'.join(map(str, m.image_shape))}, {n:,} parameters, "
                f"{self.weights} weights, step {self.step})")


# ----------------------------------------------------------------------------- writing


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically: temp file, fsync, rename, fsync the directory."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _weights_metadata(config: Config, step: int, kind: str) -> dict[str, str]:
    return {"format": FORMAT, "kind": kind, "step": str(step), "config": config.to_json()}


def _contiguous(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    return out


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    config: Config,
    step: int,
    model_state: dict[str, torch.Tensor] | None = None,
    ema_state: dict[str, torch.Tensor] | None = None,
    train_tensors: dict[str, torch.Tensor] | None = None,
    train_json: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Atomically write a checkpoint directory ``directory`` (e.g. ``RUN/checkpoints/step_0000100``).

    Any of the weight sets may be omitted (a shipped or converted checkpoint is often EMA-only);
    ``dtype`` (e.g. ``torch.float16``) stores floating weights smaller; loading upcasts to float32.
    """
    final = Path(directory)
    if model_state is None and ema_state is None:
        raise ValueError("save_checkpoint needs model_state and/or ema_state")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create {final.parent}: {e.strerror}") from None
    tmp = final.parent / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    kill_at = os.environ.get(_KILL_ENV)
    files: list[str] = []

    def done(name: str) -> None:
        _fsync_file(tmp / name)
        files.append(name)
        if kill_at is not None and int(kill_at) == step:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: die with a half-written checkpoint

    if model_state is not None:
        save_file(_contiguous(model_state, dtype), tmp / "model.safetensors",
                  metadata=_weights_metadata(config, step, "model"))
        done("model.safetensors")
    if ema_state is not None:
        save_file(_contiguous(ema_state, dtype), tmp / "ema.safetensors",
                  metadata=_weights_metadata(config, step, "ema"))
        done("ema.safetensors")
    if train_tensors is not None:
        save_file(_contiguous(train_tensors, None), tmp / "train_state.safetensors",
                  metadata={"format": FORMAT, "step": str(step)})
        done("train_state.safetensors")
    if train_json is not None:
        (tmp / "train_state.json").write_text(json.dumps(train_json))
        done("train_state.json")
    (tmp / "config.json").write_text(config.to_json())
    files.append("config.json")
    _fsync_file(tmp / "config.json")
    manifest = {"format": FORMAT, "step": step, "files": {n: (tmp / n).stat().st_size for n in files}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync_file(tmp / MANIFEST)
    _fsync_dir(tmp)
    if final.exists():  # re-saving a step: move the old one aside first so the rename cannot fail
        old = final.parent / f".old-{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(final.parent)
    return final


def export_weights(source: str | os.PathLike, directory: str | os.PathLike, *, dtype: torch.dtype | None = None,
                   ema_only: bool = True) -> Path:
    """Write a sampling-only copy of a checkpoint (e.g. EMA weights in float16 for shipping)."""
    target = resolve_checkpoint(source)
    if target.is_file():
        raise CheckpointError(f"{source}: pass a run or checkpoint directory")
    ema, meta = read_weights(target / "ema.safetensors")
    cfg = config_from_metadata(meta, target / "ema.safetensors")
    raw = None if ema_only else read_weights(target / "model.safetensors")[0]
    return save_checkpoint(directory, config=cfg, step=int(meta.get("step", 0)), ema_state=ema, model_state=raw,
                           dtype=dtype)


# ----------------------------------------------------------------------------- verifying / finding


def verify_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    """Check that a checkpoint directory is complete; returns its manifest or raises CheckpointError."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint {d} does not exist")
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        sizes = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {d} is incomplete or corrupt (no valid {MANIFEST}); "
                              "use an earlier checkpoint") from None
    for name, size in sizes.items():
        p = d / name
        if not p.is_file() or p.stat().st_size != size:
            raise CheckpointError(f"checkpoint {d} is truncated or corrupt ({name} missing or of the "
                                  "wrong size); use an earlier checkpoint")
        if name.endswith(".safetensors"):
            _read_safetensors_header(p)
    return manifest


def _read_safetensors_header(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]})") from None


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The ``step_*`` directories of a run, oldest first (temp directories are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")]
    return sorted(dirs, key=lambda p: p.name)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The newest complete checkpoint of a run; falls back past corrupt ones with a warning."""
    run_dir = Path(run_dir)
    candidates = list_checkpoints(run_dir)
    pointer = run_dir / "checkpoints" / "latest"
    if pointer.is_file():
        named = run_dir / "checkpoints" / pointer.read_text().strip()
        if named in candidates:  # try the pointer first, then anything newer or older
            candidates.remove(named)
            candidates.append(named)
            candidates.sort(key=lambda p: (p == named, p.name))
    for d in reversed(candidates):
        try:
            verify_checkpoint(d)
            return d
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint: {e}", stacklevel=2)
    raise CheckpointError(f"no complete checkpoint in {run_dir / 'checkpoints'}; "
                          "start a new run or pass another --run-dir")


def write_latest(run_dir: str | os.PathLike, checkpoint: Path) -> None:
    write_text_atomic(Path(run_dir) / "checkpoints" / "latest", checkpoint.name + "\n")


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (and leftover temp directories)."""
    root = Path(run_dir) / "checkpoints"
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    if keep <= 0:
        return
    for p in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- loading


def read_weights(path: str | os.PathLike, device="cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(float32 state dict, metadata) of one weights file; float16/bfloat16 weights are upcast."""
    path = Path(path)
    meta = _read_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({str(e).splitlines()[0]})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, meta


def config_from_metadata(meta: dict[str, str], path: Path) -> Config:
    if "config" not in meta:
        raise CheckpointError(f"{path} carries no ddpm config in its metadata; is it a ddpm checkpoint?")
    try:
        return Config.from_json(meta["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} has an unreadable config ({e})") from None


def _is_diffusers(d: Path) -> bool:
    if (d / "model_index.json").is_file() or any(d.glob("diffusion_pytorch_model.*")):
        return True
    return any((d / sub).is_dir() and any((d / sub).glob("diffusion_pytorch_model.*"))
               for sub in ("unet", "transformer", "vae"))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Turn a run dir / checkpoint dir / weights file into a checkpoint dir or a file."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist; pass a run directory, a checkpoint "
                              "directory or a .safetensors file")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise CheckpointError(f"{p} is not a .safetensors file; pass a run or checkpoint directory")
        return p
    if (p / "checkpoints").is_dir():
        return latest_checkpoint(p)
    if any((p / n).is_file() for n in WEIGHT_FILES) or (p / MANIFEST).is_file():
        return p
    raise CheckpointError(f"{p} is neither a run directory, a checkpoint directory nor a diffusers folder")


def load_checkpoint(path: str | os.PathLike, *, use_ema: bool = True, device="cpu") -> LoadedCheckpoint:
    """Load a network for sampling/evaluation; EMA weights unless ``use_ema=False``.

    ``path`` may be a run directory (its newest complete checkpoint), a checkpoint directory, a single
    ``ema.safetensors``/``model.safetensors`` file, a diffusers folder, or a Hugging Face Hub id
    ``org/name[@revision]`` of either (downloaded once into the Hub cache; see :mod:`ddpm.hub`).
    """
    from ddpm import hub

    p = hub.resolve(path)
    if p.is_dir() and _is_diffusers(p):
        from ddpm.models.convert_diffusers import load_diffusers_folder

        model, dcfg = load_diffusers_folder(p)
        cfg = Config.for_network(model.config, dcfg)
        return LoadedCheckpoint(model.to(device).eval(), dcfg.build(), cfg, 0, p, "model")
    target = resolve_checkpoint(p)
    if target.is_dir():
        if (target / MANIFEST).is_file():
            verify_checkpoint(target)
        order = ("ema.safetensors", "model.safetensors") if use_ema else ("model.safetensors",)
        files = [target / n for n in order if (target / n).is_file()]
        if not files:
            what = "weights" if use_ema else "raw (non-EMA) weights; drop --raw"
            raise CheckpointError(f"checkpoint {target} has no {what}")
        file = files[0]
        if use_ema and file.name == "model.safetensors":
            warnings.warn(f"{target} has no EMA weights; using the raw weights", stacklevel=2)
    else:
        file = target
    state, meta = read_weights(file, device=device)
    cfg = config_from_metadata(meta, file)
    from ddpm.models.registry import build_model

    try:
        model = build_model(cfg.model)
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file} does not match its own config ({str(e).splitlines()[0]})") from None
    except UserError:
        raise
    model.to(device).eval()
    return LoadedCheckpoint(model, cfg.diffusion.build(), cfg, int(meta.get("step", 0)), file,
                            meta.get("kind", "ema" if file.name.startswith("ema") else "model"))


def load_train_state(directory: Path, device="cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, json) of a checkpoint's training state, for exact resume."""
    verify_checkpoint(directory)
    ts, js = directory / "train_state.safetensors", directory / "train_state.json"
    if not ts.is_file() or not js.is_file():
        raise CheckpointError(f"checkpoint {directory} has no training state (weights only); "
                              "use --init-from to start a new run from it")
    tensors, _ = _read_raw(ts)
    return tensors, json.loads(js.read_text())


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


def _read_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({str(e).splitlines()[0]})") from None
