"""DDP on CPU with gloo: 2 ranks train exactly like 1 process with the same global batch and seed."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ddpm.config import apply_overrides
from ddpm.data import ImageDataset
from ddpm.presets import get_preset
from ddpm import checkpoint as ckpt
from ddpm import distributed
from ddpm.train.trainer import Trainer

OVERRIDES = ["train.batch_size=4", "train.log_every=1", "train.random_flip=true", "model.dropout=0.0",
             "data.class_labels=true", "train.class_dropout=0.25"]


def dataset():
    g = torch.Generator().manual_seed(3)
    return ImageDataset(torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8, generator=g),
                        torch.arange(10) % 10, num_classes=10)


def config():
    return apply_overrides(get_preset("digits-tiny"), OVERRIDES)


def _worker(rank, world_size, port, run_dir, threads):
    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    tr = Trainer(config(), run_dir, device="cpu", dataset=dataset(), progress=False, tensorboard=False)
    tr.train(steps=3)
    # the EMA must be identical on every rank: compare against rank 0's via all_gather
    flat = torch.cat([p.detach().flatten() for p in tr.ema.model.parameters()])
    parts = [torch.zeros_like(flat) for _ in range(world_size)]
    torch.distributed.all_gather(parts, flat)
    assert torch.equal(parts[0], parts[1])
    # sharded results come back in global order on rank 0
    info = distributed.env_info()
    mine = torch.arange(7)[rank::world_size].float().view(-1, 1)
    full = distributed.gather_shards(mine, info)
    if rank == 0:
        assert torch.equal(full.view(-1), torch.arange(7).float())
    else:
        assert full is None
    distributed.cleanup()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path):
    single = Trainer(config(), tmp_path / "single", device="cpu", dataset=dataset(), progress=False,
                     tensorboard=False)
    single.train(steps=3)
    ddp_dir = tmp_path / "ddp"
    mp.start_processes(_worker, args=(2, _free_port(), str(ddp_dir), 1), nprocs=2, join=True,
                       start_method="spawn")
    a, b = ckpt.latest_checkpoint(tmp_path / "single"), ckpt.latest_checkpoint(ddp_dir)
    assert a.name == b.name == "step_0000003"
    for name in ("model.safetensors", "ema.safetensors"):
        sa, _ = ckpt.read_weights(a / name)
        sb, _ = ckpt.read_weights(b / name)
        assert sa.keys() == sb.keys()
        # Compared as one vector, not per element: a bias added just before a GroupNorm with one
        # channel per group (here the last block's conv2 and shortcut biases, before norm_out) has
        # an exactly-zero true gradient, so its gradient is rounding noise that depends on how the
        # batch was split, and Adam scales noise up to a full lr-sized step (measured: up to 1.1e-5
        # on one element, 5e-7 of the whole vector's norm).
        # Training on the wrong images moves the vector by 3.6e-3 of its norm (measured with half
        # of the dataset replaced by copies of the other half), far above this bound.
        va = torch.cat([sa[k].flatten().double() for k in sorted(sa)])
        vb = torch.cat([sb[k].flatten().double() for k in sorted(sb)])
        assert ((vb - va).norm() / va.norm()).item() <= 1e-5, name
    from ddpm.train.metrics import read_metrics

    la = [r["loss"] for r in read_metrics(tmp_path / "single")]
    lb = [r["loss"] for r in read_metrics(ddp_dir)]
    assert lb == pytest.approx(la, rel=1e-5)
    _, js = ckpt.load_train_state(b)
    assert js["world_size"] == 2


def test_rank_slices_concatenate_to_the_single_process_batch(tmp_path):
    """Fast check of the design: ranks draw the global batch and keep their rows."""
    single = Trainer(config(), tmp_path / "one", dataset=dataset(), progress=False, tensorboard=False)
    ref = single._batch()
    parts = []
    for rank in range(2):
        tr = Trainer(config(), tmp_path / f"r{rank}", dataset=dataset(), progress=False, tensorboard=False)
        tr.dist = distributed.DistInfo(rank, 2, rank)
        parts.append(tr._batch())
    for i in range(4):  # x0, t, weights, noise
        assert torch.equal(torch.cat([parts[0][i], parts[1][i]]), ref[i])
    assert torch.equal(torch.cat([parts[0][4]["y"], parts[1][4]["y"]]), ref[4]["y"])


def test_env_info_defaults(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = distributed.env_info()
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    info = distributed.env_info()
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (3, 4, False, True)
    x = torch.arange(3)
    assert distributed.gather_shards(x, distributed.DistInfo()) is x


def test_batch_not_divisible_by_ranks_is_refused(tmp_path, monkeypatch):
    from ddpm.errors import ConfigError

    monkeypatch.setattr(distributed, "setup", lambda device=None: (distributed.DistInfo(0, 3, 0), torch.device("cpu")))
    with pytest.raises(ConfigError, match="divisible"):
        Trainer(config(), tmp_path / "r", dataset=dataset(), progress=False)
