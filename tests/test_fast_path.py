"""Each fast path computes the same function as the plain path it replaces.

fp32 fast paths must agree to 1e-5 relative error; bf16 autocast must stay within BF16_RTOL of fp32
(bf16 keeps 8 bits of mantissa, ~4e-3 per rounding; a 16-layer-deep network accumulates a few of
those). Runs on CPU by default; ``DDPM_TEST_DEVICE=cuda`` (set by scripts/gpu_check.sh) runs the
same checks on a GPU, plus the CUDA-only ones (fused Adam, CUDA graphs, no host syncs).
"""

from __future__ import annotations

import copy
import itertools
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddpm import accel
from ddpm.config import DiffusionConfig
from ddpm.models.unet import UNetConfig
from ddpm.errors import ConfigError
from ddpm.models.unet import AttnBlock, UNet, init_layer
from ddpm.train.ema import EMA

DEVICE = torch.device(os.environ.get("DDPM_TEST_DEVICE", "cpu"))
FP32_RTOL = 1e-5
BF16_RTOL = 2e-2
cuda_only = pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA-only fast path; set DDPM_TEST_DEVICE=cuda on a GPU")

# A small net with every block type of the paper's net (resblocks with and without shortcut,
# attention, down/up-sampling) at 8x8; dropout off so train-mode passes are deterministic.
SMALL = UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, resolution=8)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def trained_like(config: UNetConfig = SMALL, seed: int = 0) -> UNet:
    """A UNet whose near-zero layers (conv2, proj_out, conv_out) are re-initialised to full scale
    and whose biases are random, so outputs are O(1) as in a trained net, not ~1e-6."""
    torch.manual_seed(seed)
    model = UNet(config)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init_layer(m, 1.0)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    return model.to(DEVICE)


def batch(n: int = 4, config: UNetConfig = SMALL, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, config.in_channels, config.resolution, config.resolution, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    return x.to(DEVICE), t.to(DEVICE)


# ------------------------------------------------------------------------- memory format


def test_channels_last_forward_matches_contiguous():
    plain = trained_like().eval()
    fast = accel.to_channels_last(copy.deepcopy(plain))
    assert fast.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x, t = batch()
    with torch.no_grad():
        ref = plain(x, t)
        out = fast(accel.channels_last_input(x), t)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= FP32_RTOL


def test_channels_last_gradients_match_contiguous():
    plain = trained_like().train()
    fast = accel.to_channels_last(copy.deepcopy(plain))
    x, t = batch()
    target = torch.randn_like(x)
    for m, inp in ((plain, x), (fast, accel.channels_last_input(x))):
        F.mse_loss(m(inp, t), target).backward()
    # One flat vector: some gradients are exactly zero in real arithmetic (a conv bias followed by a
    # GroupNorm with one channel per group) and hold only rounding noise, so compare the whole.
    ref = torch.cat([p.grad.flatten() for p in plain.parameters()])
    got = torch.cat([p.grad.flatten() for p in fast.parameters()])
    assert rel_err(got, ref) <= FP32_RTOL


# ------------------------------------------------------------------------------ attention


def explicit_attention(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """The authors' attn_block written out: softmax(q k^T C^-1/2) v with 1x1 projections."""
    b, c, hh, ww = x.shape
    h = block.norm(x)
    q, k, v = (layer(h).reshape(b, c, hh * ww) for layer in (block.q, block.k, block.v))
    w = torch.einsum("bci,bcj->bij", q, k) * c**-0.5  # (B, query i, key j)
    w = torch.softmax(w, dim=-1)
    out = torch.einsum("bij,bcj->bci", w, v).reshape(b, c, hh, ww)
    return x + block.proj_out(out)


@pytest.mark.parametrize("size", [4, 8])
def test_sdpa_attention_matches_explicit_softmax(size):
    torch.manual_seed(0)
    block = AttnBlock(64).to(DEVICE)
    init_layer(block.proj_out, 1.0)  # full-scale output so the attention path is visible
    x = torch.randn(3, 64, size, size, device=DEVICE)
    with torch.no_grad():
        got = block(x)
        ref = explicit_attention(block, x)
        assert rel_err(got - x, ref - x) <= FP32_RTOL  # compare the attention branch, not the skip


# ---------------------------------------------------------------------- optimizer and EMA


def test_foreach_ema_matches_per_parameter_loop():
    model = trained_like()
    ema = EMA(model, decay=0.9)
    shadow = [p.detach().clone() for p in model.parameters()]  # the per-parameter reference
    g = torch.Generator().manual_seed(3)
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g).to(DEVICE))
        ema.update(model)
        for s, p in zip(shadow, model.parameters()):
            if step == 0:
                s.copy_(p)  # the authors' first update copies the weights (decay 1e-10 at step 0)
            else:
                s.mul_(0.9).add_(p.detach(), alpha=0.1)
    for s, e in zip(shadow, ema.model.parameters()):
        assert rel_err(e, s) <= FP32_RTOL


def _adam_trajectory(impl: dict, steps: int = 5) -> list[torch.Tensor]:
    """Adam + global-norm clipping on the UNet's parameter shapes, fed the same random gradients."""
    params = [p.detach().clone().requires_grad_(True) for p in trained_like(seed=4).parameters()]
    opt = torch.optim.Adam(params, lr=1e-2, eps=1e-8, **impl)
    g = torch.Generator().manual_seed(5)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(DEVICE)
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=impl.get("foreach", False) or None)
        opt.step()
    return [p.detach().clone() for p in params]


def test_fast_adam_matches_plain_adam():
    fast_impl = accel.optimizer_kwargs(DEVICE)
    assert fast_impl == {"fused": True}  # fused kernels exist for CPU and CUDA
    plain = _adam_trajectory({"foreach": False})
    fast = _adam_trajectory(fast_impl)
    for a, b in zip(fast, plain):
        assert rel_err(a, b) <= FP32_RTOL


def test_fused_adam_matches_foreach_adam():
    for a, b in zip(_adam_trajectory({"fused": True}), _adam_trajectory({"foreach": True})):
        assert rel_err(a, b) <= FP32_RTOL


# -------------------------------------------------------------------------------- precision


def test_bf16_autocast_output_within_tolerance():
    model = trained_like().eval()
    x, t = batch()
    with torch.no_grad():
        ref = model(x, t)
        with accel.autocast(DEVICE, "bf16"):
            low = model(x, t)
    assert low.dtype == torch.bfloat16  # autocast really ran the convs in bf16
    err = rel_err(low.float(), ref)
    assert 0 < err <= BF16_RTOL


def test_bf16_training_loss_and_grads_within_tolerance():
    diffusion = DiffusionConfig().build()
    model = trained_like().train()
    x, t = batch()
    noise = torch.randn_like(x)
    losses, grads = {}, {}
    for precision in ("fp32", "bf16"):
        model.zero_grad(set_to_none=True)
        with accel.autocast(DEVICE, precision):
            loss = diffusion.training_losses(model, x, t, noise=noise)["loss"].mean()
        loss.backward()
        losses[precision] = loss.detach().float()
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert rel_err(losses["bf16"], losses["fp32"]) <= BF16_RTOL
    assert rel_err(grads["bf16"], grads["fp32"]) <= 5 * BF16_RTOL  # gradients: a looser documented bound


def test_autocast_fp32_is_a_no_op_and_bad_precision_is_a_user_error():
    model = trained_like().eval()
    x, t = batch()
    with torch.no_grad():
        ref = model(x, t)
        with accel.autocast(DEVICE, "fp32"):
            same = model(x, t)
    assert torch.equal(same, ref)
    with pytest.raises(ConfigError, match="precision"):
        accel.autocast(DEVICE, "fp8")
    with pytest.raises(ConfigError, match="precision"):
        accel.FastPath(precision="half").resolve(DEVICE)


def test_default_precision_and_resolve():
    fast = accel.FastPath(cuda_graph=True).resolve("cpu")
    assert fast.precision == "fp32" and fast.cuda_graph is False  # CPU: plain fp32, no graphs
    assert accel.default_precision("cpu") == "fp32"


# ------------------------------------------------------------------------------- sampling


def test_wrap_for_sampling_fp32_is_exact_and_bf16_close():
    model = trained_like()
    x, t = batch()
    with torch.no_grad():
        ref = copy.deepcopy(model).eval()(x, t)
        fn = accel.wrap_for_sampling(copy.deepcopy(model), accel.FastPath(precision="fp32"), DEVICE)
        out = fn(x, t)
        assert rel_err(out, ref) <= FP32_RTOL
        fn16 = accel.wrap_for_sampling(copy.deepcopy(model), accel.FastPath(precision="bf16"), DEVICE)
        out16 = fn16(x, t)
    assert out16.dtype == torch.float32  # the diffusion maths downstream stays in fp32
    assert 0 < rel_err(out16, ref) <= BF16_RTOL


def test_fast_sampling_chain_matches_plain_chain():
    """Ancestral sampling with the fast network call (channels_last) gives the same images."""
    from ddpm.sampling.respace import respace

    diffusion = respace(DiffusionConfig().build(), 5)
    model = trained_like()
    shape = (2, 3, 8, 8)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    step_noise = torch.randn((5, *shape), generator=torch.Generator().manual_seed(8)).to(DEVICE)
    plain = diffusion.p_sample_loop(copy.deepcopy(model).eval(), shape, noise=noise, step_noise=step_noise)
    fn = accel.wrap_for_sampling(copy.deepcopy(model), accel.FastPath(precision="fp32"), DEVICE)
    fast = diffusion.p_sample_loop(fn, shape, noise=noise, step_noise=step_noise)
    assert rel_err(fast, plain) <= FP32_RTOL


def test_cuda_graph_wrapper_is_transparent_off_cuda():
    if DEVICE.type == "cuda":
        pytest.skip("covered by test_cuda_graph_replay_matches_eager")
    model = trained_like().eval()
    x, t = batch()
    graphed = accel.CUDAGraphModel(model)
    with torch.no_grad():
        assert torch.equal(graphed(x, t), model(x, t))


@cuda_only
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replay_matches_eager(precision):
    model = trained_like().eval()
    graphed = accel.CUDAGraphModel(model, precision=precision)
    eager = accel.wrap_for_sampling(model, accel.FastPath(precision=precision, channels_last=False), DEVICE)
    tol = FP32_RTOL if precision == "fp32" else 1e-3  # same kernels; bf16 leaves room for algorithm choice
    with torch.no_grad():
        outs = []
        for seed in (1, 2, 3):  # first call captures, later calls replay with new inputs
            x, t = batch(seed=seed)
            got = graphed(x, t)
            outs.append(got)
            assert got.dtype == torch.float32
            assert rel_err(got, eager(x, t)) <= tol
        assert not torch.equal(outs[0], outs[1])  # outputs are fresh tensors, not the static buffer
        x, t = batch(n=2, seed=9)  # another shape runs eagerly
        assert rel_err(graphed(x, t), eager(x, t)) <= tol


@cuda_only
def test_sampling_loop_makes_no_host_sync():
    """Steps of the ancestral loop with pre-drawn noise queue kernels without waiting on the GPU."""
    from ddpm.sampling.respace import respace

    diffusion = respace(DiffusionConfig().build(), 8)
    model = trained_like().eval()
    shape = (2, 3, 8, 8)
    noise = torch.randn(shape, device=DEVICE)
    step_noise = torch.randn((8, *shape), device=DEVICE)
    loop = diffusion.p_sample_loop_progressive(model, shape, noise=noise, step_noise=step_noise)
    next(loop)  # first step builds cached tables (one-off copies)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in itertools.islice(loop, 5):
            pass
    finally:
        torch.cuda.set_sync_debug_mode("default")


class _RandomImages(torch.utils.data.Dataset):
    """uint8 images with the attributes the trainer uses to keep the whole set on the device."""

    def __init__(self, n: int, config: UNetConfig = SMALL):
        shape = (n, config.in_channels, config.resolution, config.resolution)
        self.images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        self.labels = torch.full((n,), -1, dtype=torch.long)
        self.shape = shape[1:]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], -1


@cuda_only
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_step_makes_no_host_sync(tmp_path, precision):
    """Trainer.train_step queues a whole update (data, loss, backward, clip, Adam, EMA) without
    waiting on the GPU: syncs happen only at log/checkpoint steps."""
    from ddpm.presets import get_preset
    from ddpm.train.trainer import Trainer

    cfg = get_preset("cifar10")
    cfg.model = SMALL
    cfg.data.resolution, cfg.data.channels = SMALL.resolution, SMALL.in_channels
    cfg.train.batch_size, cfg.train.precision = 4, precision
    cfg.train.log_every = cfg.train.sample_every = cfg.train.ckpt_every = 10**6
    trainer = Trainer(cfg, tmp_path / "run", device=DEVICE, dataset=_RandomImages(16), progress=False,
                      tensorboard=False)
    trainer.train_step()  # first step allocates optimizer state and caches tables
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.slow
def test_benchmark_script_runs_and_writes_json(tmp_path, bench):
    """benchmarks/bench.py end to end on the small preset (ddpm alone, one round)."""
    import json

    out = tmp_path / "cpu.json"
    assert bench.main(["--preset", "small", "--no-diffusers", "--repeats", "1", "--train-batch", "2",
                       "--sample-batch", "2", "--sample-steps", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["params"] == 2245763 and res["ddpm_train_step"] == "Trainer.train_step"
    for group in ("train", "ddpm", "ddim"):
        row = res["modes"]["fp32"][group]["contenders"]["ddpm"]
        assert row["sec_per_step_median"] > 0 and len(row["sec_per_step_all"]) == 1


# ------------------------------------------------------------------------------ FLOP counts


def test_count_flops_counts_two_per_multiply_add(measure):
    layer = nn.Linear(64, 32).to(DEVICE)
    x = torch.randn(5, 64, device=DEVICE)
    assert measure.count_flops(lambda: layer(x)) == 2 * 5 * 64 * 32


@pytest.mark.slow
def test_cifar10_unet_flops_match_the_documented_numbers(measure):
    """12.44 GFLOP/image forward (12.11 without attention's two 256x256 products per 16x16 block)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        model = UNet.from_preset("cifar10")
        x, t = torch.randn(1, 3, 32, 32), torch.tensor([5])
        fwd = measure.count_flops(lambda: model(x, t))
        attn = 5 * 2 * (2 * 256 * 256 * 256)  # QK^T and AV at 16x16 (256 tokens, C=256), 5 blocks
        assert abs(fwd / 1e9 - 12.44) < 0.01
        assert abs((fwd - attn) / 1e9 - 12.11) < 0.01


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = trained_like().eval()
    x, t = batch()
    compiled = accel.compile_model(model)
    with torch.no_grad():
        assert rel_err(compiled(x, t), model(x, t)) <= 1e-4
