"""Arguments and checks shared by the sub-commands, defined once so every command spells them alike.

- number types with their real ranges (:func:`positive_int`, :func:`non_negative_int`, :func:`finite_float`);
- runtime: ``--device``, ``--threads``, ``--progress`` (:func:`add_runtime_args`, :func:`setup_runtime`);
- the network's fast paths (:func:`add_speed_args`, :func:`fast_path_from_args`);
- the sampler: ``--sampler --steps --spacing --eta --guidance --option --clip --class`` parsed into one
  :class:`ddpm.config.SamplerConfig` on top of a checkpoint's default (:func:`add_sampler_args`,
  :func:`sampler_config_from_args`, :func:`class_labels_from_args`), checked once by
  :func:`ddpm.sampling.registry.resolve_sampler`;
- classifier guidance: ``--classifier --classifier-scale --model-null-label`` (:func:`add_classifier_args`,
  :func:`classifier_from_args`);
- output paths checked before any computing (:func:`check_output`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from ddpm.config import PRECISION_CHOICES
from ddpm.errors import ConfigError, UserError

MAX_THREADS = 1024


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def finite_float(low: float | None = None, high: float | None = None):
    """An argparse type: a finite float in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
            raise argparse.ArgumentTypeError(f"expected a number in {span}, got {value:g}")
        return value

    return parse


def threads(text: str) -> int:
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS} threads, got {value}")
    return value


# ----------------------------------------------------------------------------------------- runtime
def add_runtime_args(p, *, progress: bool = True) -> None:
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=threads, help="CPU threads for torch (default: torch's choice)")
    if progress:
        p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="show progress bars (default: only on a terminal)")


def setup_runtime(args):
    """Apply ``--threads`` and return the device ``--device`` names (checked)."""
    import torch

    from ddpm.accel import resolve_device

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return resolve_device(getattr(args, "device", None))


def show_progress(args, is_main: bool = True) -> bool:
    """``--progress`` / ``--no-progress``, else a bar only when stderr is a terminal."""
    wanted = getattr(args, "progress", None)
    return bool(sys.stderr.isatty() if wanted is None else wanted) and is_main


# ----------------------------------------------------------------------------------------- speed
def add_speed_args(p) -> None:
    """The network's fast paths (see docs/speed.md); the defaults change no result on CPU."""
    g = p.add_argument_group("speed")
    g.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="network precision: auto = bf16 autocast on GPUs with bf16 tensor cores "
                        "(Ampere and later), fp32 elsewhere; fp32 for paper-exact numbers")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC weights and activations (default: on CUDA; off on CPU, where it helps "
                        "only large nets)")
    g.add_argument("--compile", action="store_true", help="torch.compile the network (slow first batch)")
    g.add_argument("--cuda-graph", action="store_true",
                   help="replay the network call from a captured CUDA graph (CUDA only)")


def fast_path_from_args(args, device):
    """The :class:`ddpm.accel.FastPath` that ``add_speed_args``' flags ask for on ``device``."""
    from ddpm.accel import FastPath

    if args.cuda_graph and device.type != "cuda":
        raise ConfigError(f"--cuda-graph needs a CUDA device, but sampling runs on {device}; drop it")
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last
    return FastPath(channels_last=channels_last, precision=None if args.precision == "auto" else args.precision,
                    compile=args.compile, cuda_graph=args.cuda_graph).resolve(device)


# ----------------------------------------------------------------------------------------- sampler
def _class_arg(text: str):
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class index or 'all', got {text!r}") from None


def _option_arg(text: str) -> tuple[str, str]:
    if "=" not in text or not text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. s_churn=40), got {text!r}")
    name, value = text.split("=", 1)
    return name.strip(), value.strip()


def add_sampler_args(p, *, classes: bool = True) -> None:
    """The sampler options; every default is "the checkpoint's own" (its ``config.sampling``)."""
    from ddpm.sampling.registry import sampler_names

    g = p.add_argument_group("sampler (defaults: the checkpoint's; see docs/sampling.md)")
    g.add_argument("--sampler", choices=sampler_names(),
                   help="ddpm = ancestral (Algorithm 2); ddim = DDIM with --eta; others: docs/sampling.md")
    g.add_argument("--steps", type=positive_int, help="network steps (default: all T of the model)")
    g.add_argument("--spacing", help="which timesteps K steps visit (ddpm/ddim: uniform, quadratic, even, trailing; "
                        "each sampler lists its own in docs/sampling.md)")
    # Ranges are the registry's to check (resolve_sampler), so every entry point says the same thing.
    g.add_argument("--eta", type=finite_float(), help="DDIM's eta in [0, 1] (ddim only; default 0)")
    g.add_argument("--option", dest="sampler_options", action="append", type=_option_arg, default=[],
                   metavar="NAME=VALUE", help="a sampler option (repeatable), e.g. --option eta=0.5")
    g.add_argument("--guidance", type=finite_float(),
                   help="classifier-free guidance w >= 0 (Ho & Salimans: (1+w)·eps(x,c) - w·eps(x,null); "
                        "diffusers' guidance_scale is 1+w); needs --class")
    g.add_argument("--clip", dest="clip_denoised", action=argparse.BooleanOptionalAction, default=None,
                   help="clip x̂0 to [-1, 1] in every step (default: yes, as the authors)")
    if classes:
        g.add_argument("--class", dest="class_label", type=_class_arg, metavar="C",
                       help="class label for a class-conditional model, or 'all' (image i gets label "
                            "i %% num_classes); default: the null label, i.e. unconditional samples")


def sampler_config_from_args(args, base=None):
    """The :class:`SamplerConfig` the flags ask for, on top of ``base`` (a checkpoint's default)."""
    from ddpm.sampling.api import sampler_config

    options = dict(getattr(args, "sampler_options", []) or [])
    if getattr(args, "eta", None) is not None:
        options["eta"] = args.eta
    cfg = base
    if getattr(args, "sampler", None) is not None and (base is None or args.sampler != base.sampler):
        cfg = args.sampler  # another sampler: start from its defaults, not the checkpoint's options
    return sampler_config(cfg if cfg is not None else "ddpm", steps=args.steps, spacing=args.spacing,
                          guidance=args.guidance, clip_denoised=args.clip_denoised, options=options)


def add_classifier_args(p, *, scale_type=None) -> None:
    """Classifier guidance (Dhariwal & Nichol 2021) on top of any sampler; ``scale_type`` parses
    ``--classifier-scale`` (default: one number ≥ 0)."""
    g = p.add_argument_group("classifier guidance (Dhariwal & Nichol 2021; see docs/distillation.md)")
    g.add_argument("--classifier", metavar="CKPT",
                   help="a noise-aware classifier checkpoint (ddpm train --preset digits-classifier) that steers "
                        "samples towards --class; the ddpm sampler shifts the mean (Algorithm 1), the others "
                        "shift eps (Algorithm 2)")
    g.add_argument("--classifier-scale", type=scale_type or finite_float(0.0), metavar="S",
                   help="gradient scale s >= 0 (default 1; needs --classifier)")
    g.add_argument("--model-null-label", action="store_true",
                   help="give a class-conditional model its null label (unconditional samples) so that only the "
                        "classifier sees --class")


def classifier_from_args(args, diffusion, device):
    """(classifier network or None, scale, condition_model) that the classifier flags ask for."""
    path = getattr(args, "classifier", None)
    scale = getattr(args, "classifier_scale", None)
    if path is None:
        if scale is not None or getattr(args, "model_null_label", False):
            raise ConfigError("--classifier-scale and --model-null-label need --classifier CKPT")
        return None, 0.0, True
    from ddpm.sampling.classifier_guidance import load_classifier

    return load_classifier(path, diffusion, device=device), (1.0 if scale is None else scale), \
        not args.model_null_label


def class_labels_from_args(args, num_classes: int | None, n: int):
    """``--class`` as generate's ``class_labels`` (an int, a list, or None), checked against the model."""
    label = getattr(args, "class_label", None)
    if label is None:
        return None
    if num_classes is None:
        raise ConfigError("--class needs a class-conditional model; this checkpoint is unconditional")
    if label == "all":
        return [i % num_classes for i in range(n)]
    if not 0 <= label < num_classes:
        raise ConfigError(f"--class must be in 0..{num_classes - 1} for this model, got {label}")
    return label


# ----------------------------------------------------------------------------------------- outputs
def check_output(path: str, *, is_dir: bool = False) -> Path:
    """Fail before computing (which may take minutes) when an output cannot be written."""
    p = Path(path)
    if not is_dir and p.is_dir():
        raise UserError(f"output {p} is a directory; give a file name")
    if is_dir and p.exists() and not p.is_dir():
        raise UserError(f"output directory {p} exists and is not a directory")
    parent = p if is_dir else (p.parent if str(p.parent) else Path("."))
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UserError(f"cannot write {p}: {probe} is not a writable directory")
    return p
