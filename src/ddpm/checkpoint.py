"""Checkpoints: safetensors weights + JSON state, written atomically, loaded without unpickling.

A run directory::

    RUN/config.json  metrics.jsonl  samples/step_0005000.png
    RUN/checkpoints/latest                 -> text "step_0005000" (written last, atomically)
    RUN/checkpoints/step_0005000/model.safetensors       raw weights   } config JSON, step and kind
    RUN/checkpoints/step_0005000/ema.safetensors         EMA weights   } in the safetensors metadata
    RUN/checkpoints/step_0005000/train_state.safetensors optimizer moments, RNG states
    RUN/checkpoints/step_0005000/train_state.json        step, python/numpy RNG, samplers, data position
    RUN/checkpoints/step_0005000/manifest.json           file sizes and sha256; written last = "complete"

Every checkpoint is first written to ``checkpoints/.tmp-step_X``, each file and the directory are
fsync'ed, then the directory is renamed into place and the parent fsync'ed. A crash therefore leaves
either the old state or the new one, plus perhaps a ``.tmp-*`` directory that loading ignores.

Loading verifies every file against the manifest (size and content hash; checkpoints written before
the hashes by size only, with a note) and, before weights are used, their keys, shapes and finiteness
against the network their config describes (:func:`check_checkpoint`). A run directory resolves to its
newest checkpoint that passes, each skipped one named in a one-line warning with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ddpm.config import Config
from ddpm.errors import CheckpointError, UserError

FORMAT = "ddpm-checkpoint/1"
MANIFEST = "manifest.json"
WEIGHT_FILES = ("ema.safetensors", "model.safetensors")
_KILL_ENV = "DDPM_TEST_KILL_DURING_CHECKPOINT"  # test hook: SIGKILL mid-write at this step
T = TypeVar("T")


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
    extra_json: dict[str, dict] | None = None,
) -> Path:
    """Atomically write a checkpoint directory ``directory`` (e.g. ``RUN/checkpoints/step_0000100``).

    Any of the weight sets may be omitted (a shipped or converted checkpoint is often EMA-only);
    ``dtype`` (e.g. ``torch.float16``) stores floating weights smaller; loading upcasts to float32.
    ``extra_json``: more files, name -> content (e.g. the trainer's ``progress.json``: time trained),
    kept apart from ``train_state.json``, which holds only what decides the trajectory.
    """
    final = Path(directory)
    if model_state is None and ema_state is None:
        raise ValueError("save_checkpoint needs model_state and/or ema_state")
    tmp = final.parent / f".tmp-{final.name}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _write_files(tmp, config=config, step=step, model_state=model_state, ema_state=ema_state,
                     train_tensors=train_tensors, train_json=train_json, dtype=dtype, extra_json=extra_json)
        if final.exists():  # re-saving a step: move the old one aside first so the rename cannot fail
            old = final.parent / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(final.parent)
    except OSError as e:
        # A full disk, a read-only or vanished directory: free what was half-written (it may be what
        # fills the disk) and say so in one line; every earlier checkpoint is untouched.
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final.name} in {final.parent}: "
                              f"{e.strerror or e}; earlier checkpoints are intact "
                              f"({_newest_name(final.parent)}); fix that, then resume") from None
    return final


def _newest_name(root: Path) -> str:
    names = sorted(p.name for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []
    return f"newest: {names[-1]}" if names else "none yet"


def _default_mode(path: Path) -> None:
    """safetensors creates its files owner-only (0600); give them the mode any other file gets under the
    process's umask, so a checkpoint or an exported model can be shared like the rest of a run."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _write_files(tmp: Path, *, config, step, model_state, ema_state, train_tensors, train_json, dtype,
                 extra_json) -> None:
    kill_at = os.environ.get(_KILL_ENV)
    files: list[str] = []

    def done(name: str) -> None:
        _default_mode(tmp / name)
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
    for name, content in (extra_json or {}).items():
        (tmp / name).write_text(json.dumps(content))
        done(name)
    (tmp / "config.json").write_text(config.to_json())
    files.append("config.json")
    _fsync_file(tmp / "config.json")
    manifest = {"format": FORMAT, "step": step, "files": {n: (tmp / n).stat().st_size for n in files},
                "sha256": {n: file_sha256(tmp / n) for n in files}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync_file(tmp / MANIFEST)
    _fsync_dir(tmp)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    """Check a checkpoint directory's files against its manifest — present, of the recorded size, of
    the recorded sha256 (checkpoints written before the hashes: size only, with a one-time note),
    readable safetensors headers and JSON; returns the manifest or raises CheckpointError."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint {d} does not exist")
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        sizes = manifest["files"]
        hashes = manifest.get("sha256")
        if not isinstance(sizes, dict) or not isinstance(hashes, (dict, type(None))):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {d} is incomplete or corrupt (no valid {MANIFEST}); "
                              "use an earlier checkpoint") from None
    for name, size in sizes.items():
        p = d / name
        if not p.is_file() or p.stat().st_size != size:
            raise CheckpointError(f"checkpoint {d} is truncated or corrupt ({name} missing or of the "
                                  "wrong size); use an earlier checkpoint")
        if hashes is not None and hashes.get(name) != file_sha256(p):
            raise CheckpointError(f"checkpoint {d} is corrupt ({name} does not match its sha256 in the "
                                  "manifest: damaged after it was written); use an earlier checkpoint")
        if name.endswith(".safetensors"):
            _read_safetensors_header(p)
        elif name.endswith(".json"):
            try:
                json.loads(p.read_text())
            except (OSError, ValueError):
                raise CheckpointError(f"checkpoint {d} is corrupt ({name} is not valid JSON); "
                                      "use an earlier checkpoint") from None
    if hashes is None and str(d.resolve()) not in _NOTED:
        _NOTED.add(str(d.resolve()))
        warnings.warn(f"{d} was written before checkpoints recorded content hashes; checked by file size "
                      "only", stacklevel=3)
    return manifest


_NOTED: set[str] = set()  # checkpoints without hashes already noted in this process


def check_weights(state: dict[str, torch.Tensor], config: Config, path: Path) -> None:
    """Raise CheckpointError unless ``state`` has exactly the keys and shapes of the network ``config``
    describes (built on the meta device: nothing allocated) and only finite values."""
    from ddpm.models.registry import build_model

    try:
        want = {k: tuple(v.shape) for k, v in build_model(config.model, device="meta").state_dict().items()}
    except UserError as e:
        raise CheckpointError(f"{path}: its config describes no buildable network ({e})") from None
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} tensor(s) of its network (e.g. {missing[0]!r}); "
                              "use an earlier checkpoint")
    if extra:
        raise CheckpointError(f"{path} holds {len(extra)} tensor(s) its network does not have (e.g. "
                              f"{extra[0]!r}); use an earlier checkpoint")
    for k, shape in want.items():
        if tuple(state[k].shape) != shape:
            raise CheckpointError(f"{path}: tensor {k!r} has shape {tuple(state[k].shape)} but its network needs "
                                  f"{shape}; use an earlier checkpoint")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights (NaN or inf in {len(bad)} of {len(state)} "
                              f"tensors, e.g. {bad[0]!r}); it cannot be sampled or resumed; use an earlier checkpoint")


def check_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    """:func:`verify_checkpoint` plus what using the weights needs: every weights file has the keys,
    shapes and finite values of the network its config describes. Returns the manifest."""
    d = Path(directory)
    manifest = verify_checkpoint(d)
    for name in WEIGHT_FILES:
        if (d / name).is_file():
            state, meta = read_weights(d / name)
            check_weights(state, config_from_metadata(meta, d / name), d / name)
    return manifest


def add_hashes(directory: str | os.PathLike) -> dict[str, Any]:
    """Record the sha256 of every file in the manifest of a checkpoint written before the hashes (e.g. to
    re-ship an asset), once it passes :func:`check_checkpoint` by size; returns the new manifest."""
    d = Path(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the no-hash note: that is what this fixes
        manifest = check_checkpoint(d)
    if "sha256" not in manifest:
        manifest["sha256"] = {n: file_sha256(d / n) for n in manifest["files"]}
        write_text_atomic(d / MANIFEST, json.dumps(manifest, indent=1))
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


def newest_usable(run_dir: str | os.PathLike, use: Callable[[Path], T]) -> T:
    """``use(checkpoint)`` of the newest checkpoint of a run for which it succeeds.

    Checkpoints are tried newest step first — whatever ``checkpoints/latest`` says, since it is written
    after the checkpoint and may lag behind a complete newer one; each one ``use`` rejects with a
    CheckpointError is named in a one-line warning with the reason."""
    run_dir = Path(run_dir)
    skipped = []
    for d in reversed(list_checkpoints(run_dir)):
        try:
            return use(d)
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint {d.name}: {e}", stacklevel=3)
            skipped.append(d.name)
    why = f" ({len(skipped)} damaged: {', '.join(skipped)})" if skipped else ""
    raise CheckpointError(f"no complete checkpoint in {run_dir / 'checkpoints'} that verifies{why}; "
                          "start a new run or pass another --run-dir")


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The newest checkpoint of a run that passes :func:`check_checkpoint`; falls back past damaged
    ones with a warning naming each and why."""
    return newest_usable(run_dir, lambda d: check_checkpoint(d) and d)


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
    return (d / "unet").is_dir() and any((d / "unet").glob("diffusion_pytorch_model.*"))


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
    if (p / "checkpoints").is_dir():  # a run: its newest checkpoint that verifies (as `ddpm info` says)
        return newest_usable(p, lambda d: _load_one(d, use_ema, device, check_all=True))
    return _load_one(resolve_checkpoint(p), use_ema, device)


def _load_one(target: Path, use_ema: bool, device, check_all: bool = False) -> LoadedCheckpoint:
    """Load one checkpoint directory or weights file; ``check_all``: every weights file must pass
    :func:`check_checkpoint`, not only the one loaded."""
    if target.is_dir():
        if check_all:
            check_checkpoint(target)
        elif (target / MANIFEST).is_file():
            verify_checkpoint(target)
        order = ("ema.safetensors", "model.safetensors") if use_ema else ("model.safetensors",)
        files = [target / n for n in order if (target / n).is_file()]
        if not files:
            what = "weights" if use_ema else "raw (non-EMA) weights; drop --raw"
            raise CheckpointError(f"checkpoint {target} has no {what}")
        file = files[0]
        if use_ema and file.name == "model.safetensors":
            warnings.warn(f"{target} has no EMA weights; using the raw weights", stacklevel=3)
    else:
        file = target
    state, meta = read_weights(file, device=device)
    cfg = config_from_metadata(meta, file)
    check_weights(state, cfg, file)  # keys, shapes and finiteness: NaN weights would sample black images
    from ddpm.models.registry import build_model

    try:
        model = build_model(cfg.model)
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file} does not match its own config ({str(e).splitlines()[0]})") from None
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


def _read_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({str(e).splitlines()[0]})") from None


def __getattr__(name: str):
    # The packing of the trainer's own state moved to ddpm.train.state; these aliases keep
    # ``ckpt.pack_train_state`` / ``ckpt.restore_train_state`` working.
    if name in ("pack_train_state", "restore_train_state"):
        from ddpm.train import state

        return getattr(state, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
