#!/usr/bin/env python
"""ddpm vs diffusers on the paper's CIFAR-10 U-Net: training and sampling throughput, one process.

    python benchmarks/bench.py --device cpu  --out benchmarks/results/cpu.json
    python benchmarks/bench.py --device cuda --out benchmarks/results/cuda.json

Both libraries get the same architecture (``diffusers_kwargs_for``) and the same weights (diffusers'
random init converted into ddpm's layout with ``convert_diffusers_state_dict``); the script checks
that both networks compute the same function before timing anything.

Contenders, per precision mode:
  ddpm                 the library's own paths (accel.FastPath defaults: channels_last, foreach/fused
                       Adam and EMA; bf16 autocast in bf16 mode; TF32 in CUDA fp32 mode)
  diffusers            as its users run it: UNet2DModel + DDPM/DDIM scheduler loops as in
                       DDPMPipeline / DDIMPipeline, train step as in examples/train_unconditional.py
                       (torch Adam with PyTorch's default implementation, EMAModel defaults), fp32,
                       PyTorch's default TF32 flags
  diffusers+tricks     the same with our generic tricks: channels_last, foreach/fused Adam,
                       EMAModel(foreach=True), bf16 autocast in bf16 mode, TF32 in fp32 mode

Timing: every contender runs once untimed (warm-up), then ``--repeats`` rounds in which the
contenders take turns (A/B/C/A/B/C...), each timed over ``--train-steps`` training steps or
``--sample-steps`` sampler steps; the median per step is reported. Sampling measures a few steps of
the real loop and extrapolates to 1000 ancestral / 50 DDIM steps (the per-step cost does not depend
on the chain length). Ratios are ddpm's throughput over the contender's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import itertools
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ddpm import accel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # noqa: E402  (FLOP counting and peaks, beside this script)
from ddpm.config import DiffusionConfig
from ddpm.models.unet import UNet, count_parameters

T_DDPM, T_DDIM = 1000, 50


@dataclass
class Contender:
    name: str
    run: Callable[[], None]  # one timed unit (k training steps or k sampler steps)
    units: int  # steps per run
    flags: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    times: list[float] = field(default_factory=list)  # wall seconds per unit
    cpu_times: list[float] = field(default_factory=list)  # process CPU seconds per unit (all threads)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--preset", default="cifar10", help="U-Net preset (default: the paper's CIFAR-10 net)")
    p.add_argument("--precision", nargs="+", default=None,
                   help="precision modes to run: fp32 and/or bf16 (default: fp32 on CPU, bf16 fp32 on CUDA)")
    p.add_argument("--train-batch", type=int, default=None, help="default 8 on CPU, 128 on CUDA")
    p.add_argument("--sample-batch", type=int, default=None, help="default 8 on CPU, 256 on CUDA")
    p.add_argument("--train-steps", type=int, default=None, help="training steps per timed run (1 CPU, 20 CUDA)")
    p.add_argument("--sample-steps", type=int, default=None, help="sampler steps per timed run (2 CPU, 20 CUDA)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported; >= 5 recommended)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--only", nargs="+", default=["train", "ddpm", "ddim"], choices=["train", "ddpm", "ddim"])
    p.add_argument("--no-diffusers", action="store_true", help="time ddpm alone")
    p.add_argument("--compile", action="store_true", help="also time ddpm with torch.compile")
    p.add_argument("--cuda-graph", action="store_true", help="also time ddpm sampling with CUDA-graph replay")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler tables: ddpm training step; ddpm and diffusers+tricks forward")
    p.add_argument("--out", default=None, help="write results JSON here")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.precision = args.precision or (["bf16", "fp32"] if cuda else ["fp32"])
    args.train_batch = args.train_batch or (128 if cuda else 8)
    args.sample_batch = args.sample_batch or (256 if cuda else 8)
    args.train_steps = args.train_steps or (20 if cuda else 1)
    args.sample_steps = args.sample_steps or (20 if cuda else 2)
    return args


# ------------------------------------------------------------------------------------- models


def build_models(preset: str, device: torch.device, with_diffusers: bool):
    """ddpm UNet and (optionally) two diffusers UNet2DModels, all holding the same weights."""
    torch.manual_seed(0)
    ours = UNet.from_preset(preset)
    if not with_diffusers:
        return ours, None, None
    from diffusers import UNet2DModel

    from ddpm.models.convert_diffusers import convert_diffusers_state_dict, diffusers_kwargs_for

    kwargs = diffusers_kwargs_for(ours.config)
    theirs = UNet2DModel(**kwargs)
    ours.load_state_dict(convert_diffusers_state_dict(theirs.state_dict(), ours.config))
    theirs_fast = UNet2DModel(**kwargs)
    theirs_fast.load_state_dict(theirs.state_dict())
    return ours, theirs, theirs_fast


def check_same_function(ours, theirs, device) -> float:
    """Max |ddpm − diffusers| output difference on one batch (eval mode, fp32); must be ~1e-6."""
    x = torch.randn(2, ours.config.in_channels, ours.config.resolution, ours.config.resolution, device=device)
    t = torch.tensor([3, 777], device=device)
    with torch.no_grad():
        a = ours.eval()(x, t)
        b = theirs.eval()(x, t).sample
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------------- contenders


def _tf32_flags(enabled: bool | None):
    """Context setting the TF32 switches (None: PyTorch's defaults: matmul off, cuDNN on)."""

    @contextlib.contextmanager
    def ctx():
        old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        if enabled is None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
        else:
            accel.set_tf32(enabled)
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old

    return ctx


class _RandomImages(torch.utils.data.Dataset):
    """Uniform random uint8 images shaped like the training set (the step's cost ignores content)."""

    def __init__(self, n: int, channels: int, res: int):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, channels, res, res), dtype=torch.uint8, generator=g)
        self.labels = torch.full((n,), -1, dtype=torch.long)
        self.shape = (channels, res, res)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], -1


def ours_train(model, diffusion, device, batch, steps, precision, fast: accel.FastPath, workdir: Path):
    """ddpm's training step as users run it: ``Trainer.train_step`` (data on the device, flips, t and
    noise draws, loss, backward, clipping, warm-up lr, fused/foreach Adam, foreach EMA), starting
    from ``model``'s weights. Falls back to the same recipe inline if the trainer is unavailable."""
    try:
        from ddpm.presets import get_preset
        from ddpm.train.trainer import Trainer
    except ImportError:
        Trainer = None
    if Trainer is not None:
        cfg = get_preset("cifar10")
        cfg.model = model.config
        cfg.data.resolution, cfg.data.channels = model.config.resolution, model.config.in_channels
        cfg.train.batch_size, cfg.train.precision, cfg.train.compile = batch, precision, fast.compile
        cfg.train.log_every = cfg.train.sample_every = cfg.train.ckpt_every = 10**9
        data = _RandomImages(max(4 * batch, 256), model.config.in_channels, model.config.resolution)
        run_dir = Path(tempfile.mkdtemp(prefix=f"run-{precision}-", dir=workdir))
        trainer = Trainer(cfg, run_dir, device=device, dataset=data,
                          progress=False, tensorboard=False)
        trainer.model.load_state_dict(model.state_dict())
        trainer.ema.load_state_dict(model.state_dict())
        if fast.channels_last:  # the trainer itself uses channels_last on CUDA only
            accel.to_channels_last(trainer.model)
            accel.to_channels_last(trainer.ema.model)

        def run():
            for _ in range(steps):
                trainer.train_step()

        run.kind = "Trainer.train_step"
        return run

    model = accel.prepare_model(model, fast, device).train()
    res = model.config.resolution
    data = torch.rand(batch, model.config.in_channels, res, res, device=device) * 2 - 1
    from ddpm.train.ema import EMA

    opt = torch.optim.Adam(model.parameters(), lr=2e-4, eps=1e-8, **accel.optimizer_kwargs(device))
    ema = EMA(model, 0.9999)
    params = list(model.parameters())

    def step(x):
        t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), device=device)
        with accel.autocast(device, precision):
            loss = diffusion.training_losses(model, x, t)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        ema.update(model)

    def run():
        for _ in range(steps):
            step(data)

    run.kind = "inline"
    return run


def diffusers_train(unet, scheduler, device, batch, steps, precision, tricks: bool):
    """diffusers' examples/train_unconditional.py step: add_noise, MSE on ε, clip, Adam, EMAModel."""
    from diffusers.training_utils import EMAModel

    unet = unet.to(device).train()
    if tricks:
        accel.to_channels_last(unet)
    opt_kwargs = accel.optimizer_kwargs(device) if tricks else {}
    opt = torch.optim.Adam(unet.parameters(), lr=2e-4, eps=1e-8, **opt_kwargs)
    ema = EMAModel(unet.parameters(), decay=0.9999, foreach=tricks)
    ema.to(device)
    res = unet.config.sample_size
    data = torch.rand(batch, unet.config.in_channels, res, res, device=device) * 2 - 1
    use_autocast = tricks and precision == "bf16"

    def run():
        for _ in range(steps):
            noise = torch.randn(data.shape, device=device)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device).long()
            noisy = scheduler.add_noise(data, noise, t)
            with accel.autocast(device, "bf16" if use_autocast else "fp32"):
                out = unet(noisy, t, return_dict=False)[0]
            loss = F.mse_loss(out.float(), noise.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            ema.step(unet.parameters())

    return run


def ours_sampler(model, diffusion, device, batch, steps, precision, fast, kind: str):
    """A few steps of ddpm's own ancestral (1000-step) or DDIM (50-step, η=0) loop."""
    from ddpm.sampling.ddim import ddim_sample_loop_progressive
    from ddpm.sampling.respace import respace

    fn = accel.wrap_for_sampling(model, dataclasses_replace(fast, precision=precision), device)
    shape = (batch, model.config.in_channels, model.config.resolution, model.config.resolution)
    gen = torch.Generator(device).manual_seed(0)

    if kind == "ddpm":
        def loop():
            return diffusion.p_sample_loop_progressive(fn, shape, generator=gen, device=device)
    else:
        spaced = respace(diffusion, T_DDIM)

        def loop():
            return ddim_sample_loop_progressive(spaced, fn, shape, eta=0.0, generator=gen, device=device)

    def run():
        for _ in itertools.islice(loop(), steps):
            pass

    return run


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def diffusers_sampler(unet, device, batch, steps, precision, tricks: bool, kind: str):
    """The loop body of DDPMPipeline / DDIMPipeline (unet(...).sample, scheduler.step), k steps."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=T_DDPM, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  clip_sample=True)
    unet = unet.to(device).eval()
    if tricks:
        accel.to_channels_last(unet)
    if kind == "ddpm":
        sched = DDPMScheduler(variance_type="fixed_large", **common)
        sched.set_timesteps(T_DDPM)
    else:
        sched = DDIMScheduler(**common)
        sched.set_timesteps(T_DDIM)
    res = unet.config.sample_size
    shape = (batch, unet.config.in_channels, res, res)
    gen = torch.Generator(device).manual_seed(0)
    use_autocast = tricks and precision == "bf16"

    @torch.no_grad()
    def run():
        image = torch.randn(shape, generator=gen, device=device)
        for t in sched.timesteps[:steps]:
            with accel.autocast(device, "bf16" if use_autocast else "fp32"):
                out = unet(image, t).sample
            if kind == "ddpm":
                image = sched.step(out.float(), t, image, generator=gen).prev_sample
            else:
                image = sched.step(out.float(), t, image, eta=0.0).prev_sample

    return run


# ------------------------------------------------------------------------------------- timing


def time_interleaved(contenders: list[Contender], repeats: int, device) -> None:
    """Warm-up once each, then ``repeats`` rounds of A/B/C...; fills ``c.times`` (seconds per unit)."""
    for c in contenders:
        with c.flags():
            c.run()
        measure.synchronize(device)
    for r in range(repeats):
        for c in contenders:
            with c.flags():
                measure.synchronize(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                c.run()
                measure.synchronize(device)
                c.times.append((time.perf_counter() - start) / c.units)
                c.cpu_times.append((time.process_time() - cpu_start) / c.units)
        print(f"    round {r + 1}/{repeats}: " + ", ".join(f"{c.name} {c.times[-1]:.4f}s" for c in contenders),
              flush=True)


def summarize(group: str, contenders: list[Contender], batch: int, chain: int | None,
              flops_per_image: float | None) -> dict:
    out: dict = {"batch": batch, "contenders": {}}
    for c in contenders:
        med = statistics.median(c.times)
        row = {"sec_per_step_median": med, "sec_per_step_all": c.times,
               "cpu_sec_per_step_median": statistics.median(c.cpu_times),
               "images_per_s" if chain is None else "nfe_per_s": batch / med}
        if chain is not None:
            row["images_per_s_extrapolated"] = batch / (med * chain)
            row["sec_per_chain_extrapolated"] = med * chain
        if flops_per_image:
            row["flops_per_s"] = flops_per_image * batch / med
        out["contenders"][c.name] = row
    ours = [c for c in contenders if c.name.startswith("ddpm")]
    base = statistics.median(ours[0].times) if ours else None
    out["ratios"] = {
        f"{ours[0].name}/{c.name}": statistics.median(c.times) / base
        for c in contenders if base and c is not ours[0]
    }
    # Each round's contenders ran back to back under the same load, so their ratio within a round
    # is the paired measurement; its median and a bootstrap interval say how far the data go.
    out["paired_ratios"] = {
        f"{ours[0].name}/{c.name}": paired_ratio_summary(ours[0].times, c.times)
        for c in contenders if base and c is not ours[0]
    }
    # On a loaded machine wall time includes waiting for a core; CPU time is a second opinion.
    if ours:
        cbase = statistics.median(ours[0].cpu_times)
        out["cpu_time_ratios"] = {
            f"{ours[0].name}/{c.name}": statistics.median(c.cpu_times) / cbase
            for c in contenders if cbase and c is not ours[0]
        }
    return out


def paired_ratio_summary(ours: list[float], theirs: list[float], confidence: float = 0.95,
                         resamples: int = 10_000, seed: int = 0) -> dict:
    """Per-round ratios theirs[r] / ours[r] (> 1: ddpm faster), their median, and a percentile
    bootstrap interval for that median (fixed seed, so a results file always renders the same)."""
    ratios = [b / a for a, b in zip(ours, theirs)]
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    tail = (1.0 - confidence) / 2
    lo, hi = meds[int(tail * (resamples - 1))], meds[int((1.0 - tail) * (resamples - 1))]
    return {"per_round": ratios, "median": statistics.median(ratios), "ci_low": lo, "ci_high": hi,
            "confidence": confidence}


def print_table(title: str, res: dict, chain: int | None) -> None:
    print(f"\n== {title} (batch {res['batch']}) ==")
    unit = "img/s" if chain is None else "NFE/s"
    hdr = f"{'contender':<24}{'s/step':>10}{unit:>10}"
    if chain is not None:
        hdr += f"{'img/s (' + str(chain) + ' st)':>16}"
    hdr += f"{'TFLOP/s':>10}"
    print(hdr)
    for name, row in res["contenders"].items():
        rate = row["images_per_s"] if chain is None else row["nfe_per_s"]
        line = f"{name:<24}{row['sec_per_step_median']:>10.4f}{rate:>10.2f}"
        if chain is not None:
            line += f"{row['images_per_s_extrapolated']:>16.4f}"
        line += f"{row.get('flops_per_s', 0) / 1e12:>10.3f}"
        print(line)
    for k, v in res["ratios"].items():
        pr = res["paired_ratios"][k]
        print(f"  ratio {k}: {v:.3f}x (wall)   {res['cpu_time_ratios'][k]:.3f}x (process CPU time)   "
              f"per-round median {pr['median']:.3f}x, {100 * pr['confidence']:.0f}% interval "
              f"{pr['ci_low']:.3f}-{pr['ci_high']:.3f}")


def machine_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "processor": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg(),
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["capability"] = torch.cuda.get_device_capability(device)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def flop_counts(model, diffusion, device) -> dict:
    """Forward and training-step FLOPs per image at the model's resolution (PyTorch's counter)."""
    res = model.config.resolution
    x = torch.randn(2, model.config.in_channels, res, res, device=device)
    t = torch.tensor([1, 500], device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        fwd = measure.count_flops(lambda: model(x, t)) / 2
    model.train()

    def step():
        diffusion.training_losses(model, x, t)["loss"].mean().backward()

    train = measure.count_flops(step) / 2
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {"forward_per_image": fwd, "train_step_per_image": train}


def profile_ours(model, diffusion, device, batch, precision, fast, workdir: Path, theirs_fast=None) -> dict:
    """torch.profiler tables (top ops by self time) for one ddpm training step and three forwards;
    with ``theirs_fast``, also three forwards of diffusers+tricks (channels_last, same precision),
    so the two op lists can be compared line by line."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    run_train = ours_train(model, diffusion, device, batch, 1, precision, fast, workdir)
    run_train()
    tables = {}
    with profile(activities=acts) as prof:
        run_train()
        measure.synchronize(device)
    tables["ddpm train_step"] = prof.key_averages().table(sort_by=sort, row_limit=15)
    fn = accel.wrap_for_sampling(model, dataclasses_replace(fast, precision=precision), device)
    res = model.config.resolution
    x = torch.randn(batch, model.config.in_channels, res, res, device=device)
    t = torch.full((batch,), 500, device=device)
    calls = {"ddpm forward": fn}
    if theirs_fast is not None:
        unet = accel.to_channels_last(theirs_fast.to(device).eval())

        def theirs_fn(x, t):
            with accel.autocast(device, precision):
                return unet(x, t).sample

        calls["diffusers+tricks forward"] = theirs_fn
    with torch.no_grad():
        for name, call in calls.items():
            call(x, t)
            with profile(activities=acts) as prof:
                for _ in range(3):
                    call(x, t)
                measure.synchronize(device)
            tables[name] = prof.key_averages().table(sort_by=sort, row_limit=18)
    return tables


# --------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-") as tmp:
        return _main(args, argv, Path(tmp))


def _main(args, argv, workdir: Path) -> int:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with_diffusers = not args.no_diffusers
    if with_diffusers:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            print("diffusers is not installed: pip install diffusers (or pass --no-diffusers)", file=sys.stderr)
            return 2

    diffusion = DiffusionConfig().build()
    ours, theirs, theirs_fast = build_models(args.preset, device, with_diffusers)
    results: dict = {
        "command": " ".join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:])),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "preset": args.preset, "params": count_parameters(ours),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "modes": {},
    }
    print(f"ddpm benchmark: preset {args.preset} ({results['params']:,} parameters) on {device}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    if with_diffusers:
        ours.to(device)
        theirs.to(device)
        diff = check_same_function(ours, theirs, device)
        results["max_abs_diff_vs_diffusers"] = diff
        print(f"same weights: max |ddpm - diffusers| output difference {diff:.2e}")
        if diff > 1e-3:
            print("networks differ: conversion or architecture mismatch; refusing to compare", file=sys.stderr)
            return 1

    flops = flop_counts(ours.to(device), diffusion, device)
    results["flops"] = flops
    print(f"FLOPs per image (torch.utils.flop_counter): forward {flops['forward_per_image'] / 1e9:.2f} G, "
          f"training step {flops['train_step_per_image'] / 1e9:.2f} G")

    if args.profile:
        results["profile"] = profile_ours(ours, diffusion, device, args.train_batch, args.precision[0],
                                          accel.FastPath(), workdir, theirs_fast)
        for name, table in results["profile"].items():
            print(f"\n-- profile: {name} (batch {args.train_batch}) --\n{table}")

    for precision in args.precision:
        fast = accel.FastPath(precision=precision, tf32=precision == "fp32")
        peak_key = precision if device.type == "cuda" else "fp32"
        peak = measure.datasheet_peak_flops(device, peak_key, tf32=True)
        peak_src = "datasheet"
        if peak is None:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            peak, peak_src = measure.measure_matmul_flops(device, dtype), "measured square matmul"
        mode: dict = {"peak_flops": peak, "peak_source": peak_src}
        print(f"\n### mode {precision}: peak {peak / 1e12:.3f} TFLOP/s ({peak_src})")
        ours_flags = _tf32_flags(fast.tf32 if device.type == "cuda" else None)
        default_flags = _tf32_flags(None)
        trick_flags = _tf32_flags(True if precision == "fp32" else None)

        groups = [("train", None, flops["train_step_per_image"]), ("ddpm", T_DDPM, flops["forward_per_image"]),
                  ("ddim", T_DDIM, flops["forward_per_image"])]
        for group, chain, fpi in groups:
            if group not in args.only:
                continue
            if group == "train":
                b, k = args.train_batch, args.train_steps
                cs = [Contender("ddpm", ours_train(ours, diffusion, device, b, k, precision, fast, workdir), k,
                                ours_flags)]
                results["ddpm_train_step"] = cs[0].run.kind
                if with_diffusers:
                    from diffusers import DDPMScheduler

                    sched = DDPMScheduler(num_train_timesteps=T_DDPM, beta_schedule="linear")
                    cs.append(Contender("diffusers", diffusers_train(theirs, sched, device, b, k, precision, False),
                                        k, default_flags))
                    cs.append(Contender("diffusers+tricks",
                                        diffusers_train(theirs_fast, sched, device, b, k, precision, True),
                                        k, trick_flags))
            else:
                b, k = args.sample_batch, args.sample_steps
                cs = [Contender("ddpm", ours_sampler(ours, diffusion, device, b, k, precision, fast, group),
                                k, ours_flags)]
                if args.cuda_graph and device.type == "cuda":
                    gfast = dataclasses_replace(fast, cuda_graph=True)
                    cs.append(Contender("ddpm+cudagraph",
                                        ours_sampler(ours, diffusion, device, b, k, precision, gfast, group),
                                        k, ours_flags))
                if with_diffusers:
                    cs.append(Contender("diffusers", diffusers_sampler(theirs, device, b, k, precision, False, group),
                                        k, default_flags))
                    cs.append(Contender("diffusers+tricks",
                                        diffusers_sampler(theirs_fast, device, b, k, precision, True, group),
                                        k, trick_flags))
            if args.compile:
                cfast = dataclasses_replace(fast, compile=True)
                if group == "train":
                    cs.insert(1, Contender("ddpm+compile",
                                           ours_train(ours, diffusion, device, b, k, precision, cfast, workdir),
                                           k, ours_flags))
                else:
                    cs.insert(1, Contender("ddpm+compile",
                                           ours_sampler(ours, diffusion, device, b, k, precision, cfast, group),
                                           k, ours_flags))
            print(f"\n[{precision}] {group}: batch {b}, {k} step(s) per timed run, {args.repeats} rounds")
            time_interleaved(cs, args.repeats, device)
            res = summarize(group, cs, b, chain, fpi)
            for row in res["contenders"].values():
                if "flops_per_s" in row:
                    row["fraction_of_peak"] = row["flops_per_s"] / peak
            mode[group] = res
            title = {"train": "training step", "ddpm": f"ancestral sampling ({T_DDPM} steps, extrapolated)",
                     "ddim": f"DDIM sampling ({T_DDIM} steps, eta 0, extrapolated)"}[group]
            print_table(f"[{precision}] {title}", res, chain)
        results["modes"][precision] = mode

    results["machine"]["loadavg_end"] = os.getloadavg()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
