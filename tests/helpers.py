"""Helpers shared by several test modules: running the CLI as a user does, and a tiny trained teacher."""

from ddpm.cli import main

# A U-Net small enough to train in a second: the distillation tests' teachers and students.
TINY_NET = ["model.ch=16", "model.ch_mult=1,", "model.num_res_blocks=1", "model.attn_resolutions=[]",
            "model.dropout=0", "model.norm_groups=8"]


def exit_code(argv) -> int:
    """``main``'s return value, or argparse's exit status for the misuse it reports itself."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def call(argv, capsys):
    """(exit code, stdout, stderr) of ``ddpm ARGV``."""
    rc = exit_code(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def tiny_teacher(run_dir, steps: int):
    """A class-conditional ε teacher (digits-tiny recipe, T = 100, :data:`TINY_NET`) trained ``steps``
    steps into ``run_dir``; returns ``run_dir``."""
    from ddpm.config import apply_overrides
    from ddpm.presets import get_preset
    from ddpm.train.trainer import Trainer

    cfg = apply_overrides(get_preset("digits-tiny"), [*TINY_NET, "train.batch_size=4", "train.ckpt_every=0",
                                                       "data.class_labels=true", "train.class_dropout=0.1"])
    t = Trainer(cfg, run_dir, progress=False, tensorboard=False)
    t.train(steps=steps)
    t.close()
    return run_dir
