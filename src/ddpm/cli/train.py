"""`ddpm train`: train a preset or a config file (optionally overridden) into a run directory, or resume one.

Under ``torchrun --nproc_per_node=N -m ddpm train ...`` the same command trains with DDP. A SIGTERM or
SIGINT writes a checkpoint and exits with 128 + the signal number (143 / 130), so a scheduler sees the
run was stopped, not finished; ``--resume`` continues it bit for bit.
"""

from __future__ import annotations

import argparse
import signal
import sys

from ddpm.cli import common
from ddpm.config import TRAIN_PRECISION_CHOICES
from ddpm.errors import ConfigError


def add_parser(subparsers) -> None:
    from ddpm.data.load import DATASETS
    from ddpm.presets import PRESETS

    p = subparsers.add_parser("train", help="train a model (or resume a run)",
                              description="Train a DDPM into a run directory (config.json, metrics.jsonl, "
                                          "samples/, checkpoints/). See docs/training.md.")
    p.add_argument("--preset", help=f"experiment preset: {', '.join(PRESETS)}")
    p.add_argument("--config", metavar="JSON",
                   help="start from a config file instead of a preset, e.g. another run's config.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--data", help="dataset path (sets data.path)")
    p.add_argument("--data-source", choices=list(DATASETS), help="sets data.source")
    p.add_argument("--run-dir", required=True, help="directory for this run's outputs")
    p.add_argument("--steps", type=common.positive_int, help="train until this global step (default: train.steps)")
    p.add_argument("--batch-size", type=common.positive_int, help="global batch size (sets train.batch_size)")
    p.add_argument("--precision", choices=TRAIN_PRECISION_CHOICES,
                   help="sets train.precision (default auto: bf16 autocast on Ampere+ GPUs, else fp32; "
                        "fp16: float16 autocast with a loss scaler, CUDA only)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")
    p.add_argument("--init-from", metavar="CKPT",
                   help="start a new run from the weights and EMA of a checkpoint (fine-tuning)")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="log scalars, per-t losses and sample grids to RUN/tensorboard (default: when the "
                        'tensorboard package is installed; pip install -e ".[tensorboard]")')
    common.add_runtime_args(p)
    p.set_defaults(func=run)


def build_config(args):
    """The Config this invocation trains (None on a plain resume: the run's saved config is used)."""
    from ddpm.config import Config, apply_overrides
    from ddpm.presets import get_preset

    if args.preset and args.config:
        raise ConfigError("--preset and --config both name the starting config; pass one of them")
    if args.resume:
        if args.preset or args.config or args.data or args.data_source or args.init_from or args.batch_size:
            raise ConfigError("--resume continues the run with its saved config; drop --preset/--config/--data/"
                              "--data-source/--init-from/--batch-size (use --steps or --set train.steps=N)")
        if not args.overrides and not args.precision:
            return None
        from pathlib import Path

        saved = Path(args.run_dir) / "config.json"
        if not saved.is_file():
            from ddpm.errors import CheckpointError

            raise CheckpointError(f"cannot resume: {args.run_dir} is not a run directory (no config.json)")
        cfg = Config.from_json(saved.read_text())
    elif args.config:
        cfg = _read_config(args.config)
    elif args.preset:
        cfg = get_preset(args.preset)
    elif args.init_from:
        from ddpm.checkpoint import config_from_metadata, read_weights, resolve_checkpoint, WEIGHT_FILES

        target = resolve_checkpoint(args.init_from)
        files = [target] if target.is_file() else [target / n for n in WEIGHT_FILES if (target / n).is_file()]
        if not files:
            raise ConfigError(f"--init-from {args.init_from}: no weights found")
        _, meta = read_weights(files[0])
        cfg = config_from_metadata(meta, files[0])
    else:
        raise ConfigError("pass --preset NAME (see `ddpm train --help`), --config FILE, --init-from CKPT, "
                          "or --resume")
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.data_source:
        overrides.append(f"data.source={args.data_source}")
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    if args.precision:
        overrides.append(f"train.precision={args.precision}")
    if args.steps and not args.resume:
        overrides.append(f"train.steps={args.steps}")
    cfg = apply_overrides(cfg, overrides)
    if args.data and cfg.data.path != args.data:  # apply_overrides parses values; keep the path verbatim
        cfg.data.path = args.data
    return cfg


def _read_config(path: str):
    """A Config from a JSON file (a run's config.json, or one written by hand with some sections)."""
    import json
    from pathlib import Path

    from ddpm.config import Config

    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise ConfigError(f"--config {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a JSON object with sections model, diffusion, train, data, "
                          "sampling")
    try:
        return Config.from_dict(data)
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"--config {path} is not a ddpm config ({str(e).splitlines()[0]})") from None


def run(args) -> int:
    from ddpm import distributed
    from ddpm.train.loop_io import SIGNAL_EXIT_CODES
    from ddpm.train.trainer import Trainer

    common.setup_runtime(args)  # checks --device before any work
    cfg = build_config(args)
    if cfg is not None:  # every value checked before the run directory is created
        from ddpm.train.validate import validate_config

        validate_config(cfg)
    trainer = Trainer(cfg, args.run_dir, device=args.device, resume=args.resume, init_from=args.init_from,
                      progress=args.progress, tensorboard=args.tensorboard)
    try:
        record = trainer.train(steps=args.steps)
        distributed.barrier()
    finally:
        trainer.close()
        distributed.cleanup()
    if trainer.stopped_by:
        if trainer.is_main:
            print(f"ddpm train: stopped by {signal.Signals(trainer.stopped_by).name} at step {trainer.step}; "
                  f"checkpoint saved; continue with: ddpm train --resume --run-dir {args.run_dir}", file=sys.stderr)
        return SIGNAL_EXIT_CODES.get(trainer.stopped_by, 128 + trainer.stopped_by)
    if trainer.is_main:
        loss = f", loss {record['loss']:.4f}" if "loss" in record else ""
        print(f"trained {args.run_dir} to step {trainer.step}{loss}; checkpoints in {args.run_dir}/checkpoints",
              file=sys.stderr)
    return 0
