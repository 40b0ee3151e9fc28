"""Fast samplers against diffusers' schedulers: same random UNet2DModel (converted with our importer),
same x_T, same noise, float64, 10 and 25 steps.

The network both sides call is ε(x, t) = 0.1·unet(x, t) + x: a random U-Net alone is no denoiser, so
the chain would end at |x| ≈ 500 where the float32 σ tables diffusers keeps (ours are float64) set
the difference; adding x (the exact ε of data concentrated at 0 when ᾱ → 0) keeps every trajectory at
the data's scale. diffusers draws its SDE noise in float32, so our noise source does too there.
"""

import math

import pytest
import torch

from ddpm.config import DiffusionConfig
from ddpm.models.convert_diffusers import convert_diffusers_state_dict, unet_config_from_diffusers
from ddpm.models.unet import UNet
from ddpm.sampling.api import sample

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
UNET = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=[16, 32],
            down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
            act_fn="silu", attention_head_dim=None, center_input_sample=False, downsample_padding=0,
            flip_sin_to_cos=False, freq_shift=1, mid_block_scale_factor=1, norm_eps=1e-6, norm_num_groups=8,
            time_embedding_type="positional")
BETAS = dict(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**UNET).double().eval()
    cfg = unet_config_from_diffusers(dict(theirs.config))
    with torch.device("meta"):
        ours = UNet(cfg)
    ours.load_state_dict(convert_diffusers_state_dict(theirs.state_dict(), cfg), assign=True)
    ours = ours.double().eval()

    def mine(x, t, **kwargs):
        return 0.1 * ours(x, t, **kwargs) + x

    def reference(x, t):
        return 0.1 * theirs(x, t).sample + x

    mine.config = ours.config
    return mine, reference


def _run_diffusers(sched, net, latents, steps, generator=None, stop=None):
    sched.set_timesteps(steps)
    x = latents
    with torch.no_grad():
        for t in sched.timesteps[:stop]:
            eps = net(sched.scale_model_input(x, t), t)
            x = sched.step(eps, t, x, **({"generator": generator} if generator else {})).prev_sample
    return x


# (diffusers scheduler and its config, our sampler, spacing, options, state: "ve" x̃ or "vp" x, noise dtype)
CASES = {
    "EulerDiscrete": ("EulerDiscreteScheduler", {}, "euler", "linspace", {}, "ve", None),
    "EulerDiscrete trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, "euler", "trailing",
                               {}, "ve", None),
    "EulerDiscrete karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, "euler", "karras", {}, "ve",
                             None),
    "HeunDiscrete": ("HeunDiscreteScheduler", {}, "heun", "linspace", {}, "ve", None),
    "HeunDiscrete karras": ("HeunDiscreteScheduler", {"use_karras_sigmas": True}, "heun", "karras", {}, "ve", None),
    "EulerAncestralDiscrete": ("EulerAncestralDiscreteScheduler", {}, "euler-ancestral", "linspace", {}, "ve",
                               torch.float64),
    "DPMSolverMultistep ++ order 2": ("DPMSolverMultistepScheduler", {}, "dpmpp-2m", "time", {}, "vp", None),
    "DPMSolverMultistep ++ order 3": ("DPMSolverMultistepScheduler", {"solver_order": 3}, "dpmpp-3m", "time", {},
                                      "vp", None),
    "DPMSolverMultistep ++ order 2 karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True},
                                             "dpmpp-2m", "karras", {"quantize": True}, "vp", None),
    "DPMSolverMultistep ++ order 3 karras": ("DPMSolverMultistepScheduler",
                                             {"solver_order": 3, "use_karras_sigmas": True}, "dpmpp-3m", "karras",
                                             {"quantize": True}, "vp", None),
    "DPMSolverMultistep sde++ order 2": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"},
                                         "dpmpp-2m", "time", {"sde": True}, "vp", torch.float32),
    "DPMSolverMultistep sde++ order 3": ("DPMSolverMultistepScheduler",
                                         {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "dpmpp-3m",
                                         "time", {"sde": True}, "vp", torch.float32),
    "UniPCMultistep bh2": ("UniPCMultistepScheduler", {}, "unipc", "time", {}, "vp", None),
    "UniPCMultistep bh2 order 3": ("UniPCMultistepScheduler", {"solver_order": 3}, "unipc", "time", {"order": 3},
                                   "vp", None),
    "UniPCMultistep bh2 karras": ("UniPCMultistepScheduler", {"use_karras_sigmas": True}, "unipc", "karras",
                                  {"quantize": True}, "vp", None),
}


@pytest.mark.parametrize("steps", [10, pytest.param(25, marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_diffusers(case, steps, nets):
    cls, config, name, spacing, options, state, noise_dtype = CASES[case]
    mine, reference = nets
    sched = getattr(diffusers, cls)(**BETAS, **config)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    latents = x_T
    if state == "ve":  # their x̃ = x_T·√(1 + σ_0²): x_T as the VP sample at the first grid point
        sched.set_timesteps(steps)
        latents = x_T * math.sqrt(1.0 + float(sched.sigmas[0]) ** 2)
    gen = torch.Generator().manual_seed(5) if noise_dtype else None
    ref = _run_diffusers(sched, reference, latents, steps, gen)
    ours_gen = torch.Generator().manual_seed(5)
    out = sample(mine, DiffusionConfig().build(), x_T, name, steps=steps, spacing=spacing, clip_denoised=False,
                 noise=lambda t: torch.randn(x_T.shape, generator=ours_gen, dtype=noise_dtype).double(), **options)
    assert ref.abs().max() > 0.5 and torch.isfinite(ref).all()
    assert (out - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("steps", [10, pytest.param(25, marks=pytest.mark.slow)])
def test_unipc_bh1_matches_diffusers_up_to_the_last_step(steps, nets):
    """diffusers' bh1 returns NaN on the final step to σ = 0 (B(h) = h = −∞ times a zero residual),
    so the states are compared after K − 1 of the K steps, in VP units."""
    mine, reference = nets
    sched = diffusers.UniPCMultistepScheduler(**BETAS, solver_type="bh1")
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = _run_diffusers(sched, reference, x_T, steps, stop=-1)
    seen = {}
    sample(mine, DiffusionConfig().build(), x_T, "unipc", steps=steps, spacing="time", clip_denoised=False,
           variant="bh1", callback=lambda info: seen.__setitem__(info["i"], info["x"]))
    # our state after step K−2 is x̃_{K−1}; diffusers' is x_{K−1} before the corrector (which needs
    # the network at that point, called on their next, unrun, step)
    assert torch.isfinite(ref).all()
    assert (seen[steps - 2] - ref).abs().max().item() <= TOL
    assert torch.isnan(_run_diffusers(diffusers.UniPCMultistepScheduler(**BETAS, solver_type="bh1"), reference,
                                      x_T, steps)).any()
