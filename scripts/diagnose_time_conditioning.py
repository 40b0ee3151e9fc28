"""How much does a digits checkpoint use its timestep input? (the diagnosis behind the digits preset's
norm_groups=8; see src/ddpm/assets/digits/README.md)

For held-out digits x0 and noise eps at several t, prints the eps-prediction MSE with the true t and
with t replaced by t/2 and by min(2t, T-1). A network that reads t does worse with the wrong t; one
whose time bias is normalised away (GroupNorm with one channel per group) barely notices.

    python scripts/diagnose_time_conditioning.py CKPT [CKPT ...]
"""

import sys

import torch

from ddpm.checkpoint import load_checkpoint
from ddpm.data.digits import load_digits

torch.set_num_threads(1)
images, labels = load_digits("test")
x0 = torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)
y = torch.from_numpy(labels)
for path in sys.argv[1:]:
    ck = load_checkpoint(path)
    d, T = ck.diffusion, ck.diffusion.num_timesteps
    print(f"{path}: norm_groups={getattr(ck.config.model, 'norm_groups', 32)}")
    print(f"{'t':>5} {'mse(true t)':>12} {'mse(t/2)':>10} {'mse(2t)':>10}")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in (10, 50, 100, 200, 400, 600, 800, 950):
            eps = torch.randn(x0.shape, generator=g)
            tt = torch.full((len(x0),), t)
            xt = d.q_sample(x0, tt, noise=eps)
            row = []
            for t_in in (tt, tt // 2, (2 * tt).clamp(max=T - 1)):
                row.append(((ck.model(xt, t_in, y=y)[:, :1] - eps) ** 2).mean().item())
            print(f"{t:>5} {row[0]:12.5f} {row[1]:10.5f} {row[2]:10.5f}")
