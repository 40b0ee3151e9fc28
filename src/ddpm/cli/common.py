"""Arguments and checks shared by the sub-commands, defined once so every command spells them alike.

- number types with their real ranges (:func:`positive_int`, :func:`non_negative_int`, :func:`seed`,
  :func:`finite_float`, :func:`threads`), so a bad value fails at parse time;
- runtime: ``--device``, ``--threads``, ``--progress`` (:func:`add_runtime_args`, :func:`setup_runtime`);
- the network's fast paths (:func:`add_speed_args`, :func:`fast_path_from_args`);
- the sampler: ``--sampler --steps --spacing --eta --guidance --option --clip --class`` parsed into one
  :class:`ddpm.config.SamplerConfig` on top of a checkpoint's default (:func:`add_sampler_args`,
  :func:`sampler_config_from_args`, :func:`class_labels_from_args`), checked once by
  :func:`ddpm.sampling.registry.resolve_sampler`;
- classifier guidance: ``--classifier --classifier-scale --model-null-label`` (:func:`add_classifier_args`,
  :func:`classifier_from_args`);
- outputs: ``--overwrite`` (:func:`add_overwrite_arg`), every output path and format checked before
  any computing (:func:`check_output`, on :func:`ddpm.outputs.check_output`), the memory a sampling
  run needs checked before it allocates (:func:`check_memory`), and the one-line summary of what was
  run (:func:`summary`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from ddpm.config import PRECISION_CHOICES
from ddpm.errors import CheckpointError, ConfigError

MAX_THREADS = 1024
SEED_LIMIT = 2**63  # seeds index the generators' streams: 0 <= seed < 2**63 (torch takes 64-bit seeds)


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


def seed(text: str) -> int:
    """A random seed: an integer in [0, 2**63)."""
    value = non_negative_int(text)
    if value >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a seed below 2**63 = {SEED_LIMIT}, got {value}")
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
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS} threads (this machine has "
                                         f"{os.cpu_count() or '?'} CPUs), got {value}")
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
        limit_blas_threads(args.threads)
    return resolve_device(getattr(args, "device", None))


def limit_blas_threads(n: int) -> None:
    """Cap numpy's BLAS (OpenBLAS/MKL) threads as ``--threads`` caps torch's: the metrics' matrix
    products otherwise start one spinning thread per core and run 10–20× slower on a busy machine."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=int(n))


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


GUIDANCE_HELP = ("classifier-free guidance w >= 0 of Ho & Salimans: (1+w)·eps(x,c) - w·eps(x,null); "
                 "w = diffusers' guidance_scale - 1 (w = 0: the conditional model alone)")


def add_sampler_args(p, *, classes: bool = True) -> None:
    """The sampler options; every default is "the checkpoint's own" (its ``config.sampling``)."""
    from ddpm.sampling.registry import sampler_names

    g = p.add_argument_group("sampler (defaults: the checkpoint's; see docs/sampling.md)")
    g.add_argument("--sampler", choices=sampler_names(),
                   help="ddpm = ancestral (Algorithm 2); ddim = DDIM with --eta; others: docs/sampling.md")
    g.add_argument("--fast", action="store_true",
                   help="the measured fast sampler (ddpm.sampling.FAST_SAMPLER, docs/sampling.md) instead of "
                        "the checkpoint's default; --steps/--spacing/--option still override it")
    g.add_argument("--steps", type=positive_int, help="network steps (default: all T of the model)")
    g.add_argument("--spacing", help="which timesteps K steps visit (ddpm/ddim: uniform, quadratic, even, trailing; "
                        "each sampler lists its own in docs/sampling.md)")
    # Ranges are the registry's to check (resolve_sampler), so every entry point says the same thing.
    g.add_argument("--eta", type=finite_float(), help="DDIM's eta in [0, 1] (ddim only; default 0)")
    g.add_argument("--option", dest="sampler_options", action="append", type=_option_arg, default=[],
                   metavar="NAME=VALUE", help="a sampler option (repeatable), e.g. --option eta=0.5")
    g.add_argument("--guidance", type=finite_float(), help=GUIDANCE_HELP + "; needs --class")
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
    if getattr(args, "fast", False):
        from ddpm.sampling.api import FAST_SAMPLER

        if getattr(args, "sampler", None) is not None:
            raise ConfigError("--fast picks the sampler itself; drop --sampler (or --fast)")
        base = FAST_SAMPLER
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


def class_labels_from_args(args, num_classes: int | None, n: int, first_index: int = 0):
    """``--class`` as generate's ``class_labels`` (an int, a list, or None), checked against the model;
    with ``all``, image i (counted from ``first_index``) gets label i % num_classes."""
    label = getattr(args, "class_label", None)
    if label is None:
        return None
    if num_classes is None:
        raise ConfigError("--class needs a class-conditional model; this checkpoint is unconditional")
    if label == "all":
        return [(first_index + i) % num_classes for i in range(n)]
    if not 0 <= label < num_classes:
        raise ConfigError(f"--class must be in 0..{num_classes - 1} for this model, got {label}")
    return label


# ----------------------------------------------------------------------------------------- outputs
def add_overwrite_arg(p, what: str = "output files") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace existing {what} (default: refuse, so nothing is replaced silently)")


def check_output(path: str, *, is_dir: bool = False, kind: str | None = None, overwrite: bool = False,
                 flag: str | None = None, may_exist: bool = False) -> Path:
    """Fail before computing (which may take minutes) when an output cannot or may not be written:
    see :func:`ddpm.outputs.check_output`."""
    from ddpm.outputs import check_output as check

    return check(path, is_dir=is_dir, kind=kind, overwrite=overwrite, flag=flag, may_exist=may_exist)


def check_new_dir(out: str, overwrite: bool) -> Path:
    """A folder a command writes whole (a checkpoint, a diffusers folder): refused when it exists with
    content, unless ``--overwrite``."""
    path = check_output(out, is_dir=True)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise CheckpointError(f"{path} already exists; choose another OUT or pass --overwrite to replace it")
    return path


def check_memory(model_config, num_images: int, batch_size: int, sampler, device) -> None:
    """Refuse, before allocating, a sampling run that cannot fit (see :mod:`ddpm.sampling.memory`)."""
    from ddpm.sampling.memory import check_sampling_memory

    guided = bool(getattr(sampler, "guidance", 0))
    check_sampling_memory(model_config, num_images, batch_size, guidance=guided, device=device)


def summary(what: str, seconds: float, outputs) -> str:
    """The one line every producing command ends with: what was run, how long it took, where it went."""
    where = ", ".join(str(o) for o in outputs if o)
    return f"{what} in {seconds:.1f} s" + (f" -> {where}" if where else "")
