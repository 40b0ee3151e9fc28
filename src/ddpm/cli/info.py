"""`ddpm info PATH` / `ddpm info --preset NAME`: what a checkpoint, a run or a preset is — network
(described by its architecture), parameter count, diffusion, sampler, training and data settings.

A preset's network is built on the meta device to count its parameters, so even the largest is
instant and allocates nothing."""

from __future__ import annotations

import json
from pathlib import Path

from ddpm.config import Config
from ddpm.errors import CheckpointError, ConfigError


def add_parser(subparsers) -> None:
    from ddpm.presets import PRESETS

    p = subparsers.add_parser("info", help="describe a checkpoint, run directory or preset",
                              description="Show preset, step, parameter count, weights and files of a "
                                          "run dir, checkpoint dir, .safetensors file or diffusers folder, "
                                          "or (--preset) what a preset would train.")
    p.add_argument("path", nargs="?", help="run dir, checkpoint dir, .safetensors file or diffusers folder")
    p.add_argument("--preset", help=f"describe a preset instead: {', '.join(PRESETS)}")
    p.add_argument("--json", action="store_true", help="print the full config as JSON instead")
    p.set_defaults(func=run)


def _tensor_summary(path: Path) -> tuple[int, set[str]]:
    from safetensors import safe_open

    n, dtypes = 0, set()
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            s = f.get_slice(k)
            numel = 1
            for d in s.get_shape():
                numel *= d
            n += numel
            dtypes.add(s.get_dtype())
    return n, dtypes


def describe(path: str | Path) -> tuple[list[str], dict]:
    """Lines describing ``path`` and its config dict."""
    from ddpm import checkpoint as ckpt
    from ddpm import hub

    p = hub.resolve(path)
    lines: list[str] = []
    if p.is_dir() and ckpt._is_diffusers(p):
        loaded = ckpt.load_checkpoint(p)
        n = sum(t.numel() for t in loaded.model.parameters())
        cfg = loaded.config
        lines += [f"path:        {p} (diffusers folder)", f"parameters:  {n:,}"]
        return lines + _config_lines(cfg, imported=f"diffusers folder {path}"), _imported_dict(cfg)
    run = None
    if (p / "checkpoints").is_dir() or (p / "metrics.jsonl").is_file():
        from ddpm.train.summary import run_summary

        run = run_summary(p)  # progress and, per checkpoint, whether it verifies
        steps = [d.name for d in ckpt.list_checkpoints(p)]
        lines.append(f"run:         {p} (checkpoints: {', '.join(steps) or 'none'})")
        lines += run.lines
        if run.usable is None:
            lines.append(f"resumable:   no ({'no checkpoint verifies' if run.checkpoints else 'no checkpoint yet'})")
            try:
                cfg = Config.from_json((p / "config.json").read_text())
            except (OSError, ValueError, TypeError):
                return lines, {}
            return lines + _config_lines(cfg), cfg.to_dict()
        target = run.usable
    else:
        target = ckpt.resolve_checkpoint(p)
    files = [target] if target.is_file() else sorted(f for f in target.iterdir() if f.is_file())
    if target.is_dir() and (target / ckpt.MANIFEST).is_file():
        ckpt.verify_checkpoint(target)
    weights = [f for f in files if f.name in ckpt.WEIGHT_FILES] or [f for f in files if f.suffix == ".safetensors"]
    if not weights:
        raise CheckpointError(f"{target} holds no weights file")
    meta = ckpt._read_safetensors_header(weights[0])
    cfg = ckpt.config_from_metadata(meta, weights[0])
    n, _ = _tensor_summary(weights[0])
    lines.append(f"checkpoint:  {target}")
    lines.append(f"preset:      {cfg.preset or '-'}")
    lines.append(f"step:        {meta.get('step', '?')}")
    lines.append(f"parameters:  {n:,}")
    kinds = []
    for f in weights:
        _, dtypes = _tensor_summary(f)
        kinds.append(f"{f.name} ({'/'.join(sorted(dtypes))})")
    has_ema = any(f.name == "ema.safetensors" for f in weights)
    lines.append(f"weights:     {', '.join(kinds)}; EMA {'present' if has_ema else 'absent'}")
    if run is not None:
        resumable = run.resumable is not None
        lines.append(f"resumable:   {'yes, from ' + run.resumable.name if resumable else 'no (weights only)'}")
    else:
        resumable = target.is_dir() and (target / "train_state.json").is_file()
        lines.append(f"resumable:   {'yes' if resumable else 'no (weights only)'}")
    lines.append("files:       " + ", ".join(f"{f.name} {f.stat().st_size:,} B" for f in files))
    if cfg.imported_from and not resumable:  # converted weights: no recipe or data of their own
        return lines + _config_lines(cfg, imported=cfg.imported_from), _imported_dict(cfg)
    if cfg.imported_from:
        lines.append(f"initialised: from imported weights ({cfg.imported_from})")
    return lines + _config_lines(cfg), cfg.to_dict()


def describe_preset(name: str) -> tuple[list[str], dict]:
    """Lines describing preset ``name`` (parameters counted on the meta device) and its config dict."""
    from ddpm.models.registry import count_parameters
    from ddpm.presets import get_preset

    cfg = get_preset(name)
    lines = [f"preset:      {name}", f"parameters:  {count_parameters(cfg.model):,}"]
    return lines + _config_lines(cfg), cfg.to_dict()


def _imported_dict(cfg) -> dict:
    """The config of imported weights without the training recipe and dataset they never had."""
    d = cfg.to_dict()
    d.pop("train", None)
    d["data"] = {"channels": cfg.data.channels, "resolution": cfg.data.resolution,
                 "class_labels": cfg.data.class_labels}
    return d


def _config_lines(cfg, imported: str | None = None) -> list[str]:
    d, t, data, s = cfg.diffusion, cfg.train, cfg.data, cfg.sampling
    options = "".join(f", {k} {v}" for k, v in sorted((s.options or {}).items()))
    if imported:
        c, h, w = cfg.model.image_shape
        head = [f"imported:    {imported}; no training recipe or dataset is recorded with these weights",
                f"network:     {cfg.model.arch}: {cfg.model.describe()}",
                f"diffusion:   {d.schedule} betas {d.beta_start:g}..{d.beta_end:g}, T={d.num_timesteps}, "
                f"mean {d.mean_type}, variance {d.var_type}"]
        return head + [
            f"sampling:    {s.sampler}, {s.steps or 'all'} steps, guidance {s.guidance:g}, clip x̂0 "
            f"{'yes' if s.clip_denoised else 'no'}",
            f"images:      {c}x{h}x{w}{', class-conditional' if cfg.model.num_classes else ''}"]
    return [
        f"network:     {cfg.model.arch}: {cfg.model.describe()}",
        f"diffusion:   {d.schedule} betas {d.beta_start:g}..{d.beta_end:g}, T={d.num_timesteps}, "
        f"mean {d.mean_type}, variance {d.var_type}, loss {d.loss_type}",
        f"training:    lr {t.lr:g} (warm-up {t.warmup}), batch {t.batch_size}, EMA {t.ema_decay}, "
        f"{t.steps:,} steps, flips {'on' if t.random_flip else 'off'}, t-sampler {t.timestep_sampler}",
        f"sampling:    {s.sampler}, {s.steps or 'all'} steps{', ' + s.spacing + ' spacing' if s.spacing else ''}"
        f"{options}, guidance {s.guidance:g}, clip x̂0 {'yes' if s.clip_denoised else 'no'}",
        f"data:        {data.source}{' ' + data.path if data.path else ''}, {data.channels}x{data.resolution}"
        f"x{data.resolution}{', labels' if data.class_labels else ''}",
    ]


def run(args) -> int:
    if (args.path is None) == (args.preset is None):
        raise ConfigError("give a checkpoint PATH or --preset NAME (one of them)")
    lines, cfg = describe(args.path) if args.path else describe_preset(args.preset)
    if args.json:
        print(json.dumps(cfg, indent=2, sort_keys=True))
    else:
        print("\n".join(lines))
    return 0
