"""Every file the tool writes for a user: atomic writers, the overwrite check, provenance.

- **Atomic.** :func:`atomic_write` writes to a hidden temporary file in the target's own directory and
  renames it into place only when the write finished (``os.replace`` is atomic within one file
  system), so a full disk, a kill or an exception leaves the previous file intact and no partial one.
  :func:`atomic_dir` does the same for a folder (a converted checkpoint, a pipeline folder), and
  :func:`staged_files` for a set of files added to a folder (``ddpm sample --out-dir``).
- **Checked first.** :func:`check_output` refuses, before any computing, an output that exists
  (unless ``overwrite``), a wrong file format, a missing or read-only parent, a path that is a
  directory or passes through a file, and a name longer than the file system allows.
- **Provenance.** :func:`provenance` is the record that goes into every image and array written
  (PNG text chunk ``ddpm``, ``.npz`` key ``provenance``, a JSON sidecar ``NAME.json``): the checkpoint
  (path or Hub id, step, EMA or raw weights), the sampler settings, seed, labels, versions and timings.
  :func:`read_provenance` reads it back from any of them.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

from ddpm.errors import UserError

PNG_KEY = "ddpm"  # PNG text chunk holding the provenance JSON
NPZ_KEY = "provenance"  # .npz key holding it (a 0-d unicode array: readable with allow_pickle=False)
SIDECAR_SUFFIX = ".json"  # samples.png -> samples.png.json


class OutputError(UserError):
    """An output that cannot or may not be written (exists, wrong format, unwritable place)."""


# ------------------------------------------------------------------------------------ atomic writes
def _tmp_name(path: Path, tag: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = True) -> Iterator[Any]:
    """``with atomic_write(p) as f: ...`` — ``f`` is a temporary file beside ``p``; it replaces ``p``
    only when the block finished without an exception (after ``fsync``), and is removed otherwise."""
    path = Path(path)
    tmp = _tmp_name(path)
    kwargs = {"newline": ""} if "b" not in mode else {}
    f = open(tmp, mode, **kwargs)
    try:
        yield f
        f.flush()
        if fsync:
            os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # closing flushes the buffer, which fails again on a full disk
            f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent if str(path.parent) else Path("."))


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """``with atomic_dir(d) as tmp: <write files under tmp>`` — ``tmp`` is renamed to ``d`` at the end
    (an existing ``d`` is replaced only when ``overwrite``); on failure ``tmp`` is removed and ``d``
    is as it was."""
    path = Path(path)
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        raise OutputError(f"{path} already exists; choose another name or pass --overwrite to replace it")
    tmp = _tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            old = _tmp_name(path, "old")
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent if str(path.parent) else Path("."))


@contextlib.contextmanager
def staged_files(directory: str | os.PathLike) -> Iterator[Path]:
    """Files written under the yielded staging folder are moved into ``directory`` (created if
    needed) only when the block finished; on failure none of them appear there."""
    directory = Path(directory)
    if not directory.exists():
        with atomic_dir(directory) as tmp:
            yield tmp
        return
    stage = directory / f".staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        for f in sorted(stage.iterdir()):
            os.replace(f, directory / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    fsync_dir(directory)


# ------------------------------------------------------------------------------------ checks
# The file formats each kind of output is written in; a name with another suffix is refused early.
FORMATS = {"png": (".png",), "npz": (".npz",), "json": (".json",), "csv": (".csv",), "plot": (".png",)}


def check_output(path: str | os.PathLike, *, kind: str | None = None, overwrite: bool = False,
                 is_dir: bool = False, flag: str | None = None, may_exist: bool = False) -> Path:
    """``path`` if an output can be written there, else :class:`OutputError` — called before any
    computing (which may take hours), so a typo costs nothing.

    ``kind``: a key of :data:`FORMATS` (the suffix is checked); ``is_dir``: the output is a folder
    (it may exist: the caller adds to it); ``may_exist``: a file the command updates on purpose
    (a resumable table); ``flag``: the option's name, for messages.
    """
    p = Path(path)
    what = f"{flag} {p}" if flag else str(p)
    if not str(path).strip():
        raise OutputError(f"{flag or 'output'}: empty path; give a file name")
    for part in p.parts:
        if len(os.fsencode(part)) > 255:
            raise OutputError(f"{what}: a path component is longer than 255 bytes; choose a shorter name")
    if not is_dir and p.is_dir():
        raise OutputError(f"{what} is a directory; give a file name")
    if kind is not None and not is_dir and p.suffix.lower() not in FORMATS[kind]:
        raise OutputError(f"{what}: the file name must end in {' or '.join(FORMATS[kind])} "
                          f"(it is written as {kind.upper() if kind != 'plot' else 'PNG'})")
    if is_dir:
        if p.exists() and not p.is_dir():
            raise OutputError(f"{what} exists and is not a directory; choose a folder name")
    else:
        if p.exists() and not (overwrite or may_exist):
            raise OutputError(f"{what} already exists; pass --overwrite to replace it, or choose another name")
    probe = p if is_dir else (p.parent if str(p.parent) else Path("."))
    probe = Path(os.path.abspath(probe))
    while not probe.exists():
        if probe.is_symlink() or probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot write {what}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what}: {probe} is not writable; choose another place")
    return p


def ensure_parent(path: Path) -> None:
    """Create the output's parent folder (checked by :func:`check_output`)."""
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)


def next_index(directory: str | os.PathLike, width: int = 6) -> int:
    """1 + the largest ``NNNNNN.png`` in ``directory`` (0 when there is none): where numbering goes on."""
    d = Path(directory)
    if not d.is_dir():
        return 0
    numbers = [int(f.stem) for f in d.glob("*.png") if f.stem.isdigit() and len(f.stem) == width]
    return max(numbers) + 1 if numbers else 0


# ------------------------------------------------------------------------------------ provenance
def versions() -> dict[str, str]:
    import numpy
    import torch

    from ddpm import __version__

    return {"ddpm": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": sys.version.split()[0]}


def machine() -> dict[str, Any]:
    """Where timings were taken: CPU count, platform, torch threads, GPU name, and the load average
    (other processes sharing the machine change wall times several-fold)."""
    import platform

    import torch

    rec: dict[str, Any] = {"platform": platform.platform(terse=True), "processor": platform.processor() or None,
                           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        rec["load_average_1m"] = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        rec["load_average_1m"] = None
    if torch.cuda.is_available():
        rec["gpu"] = torch.cuda.get_device_name()
    return rec


def describe_machine(rec: dict | None = None) -> str:
    """e.g. ``2 CPUs (Linux-6.1-x86_64), 1 torch thread, load average 3.1``."""
    rec = rec or machine()
    gpu = f", GPU {rec['gpu']}" if rec.get("gpu") else ""
    load = "" if rec.get("load_average_1m") is None else f", load average {rec['load_average_1m']:g}"
    threads = rec["torch_threads"]
    return (f"{rec['cpus']} CPUs ({rec['platform']}){gpu}, {threads} torch thread{'s' if threads != 1 else ''}"
            f"{load}")


def checkpoint_record(ck, source: str | None = None) -> dict[str, Any]:
    """Where the weights came from: what was asked for (a path or Hub id), the file used, step, kind."""
    from ddpm import hub

    source = str(source) if source is not None else (str(ck.path) if ck.path else None)
    return {"source": source, "hub_id": source if source and hub.looks_like_repo_id(source) else None,
            "path": str(Path(ck.path).resolve()) if ck.path else None, "step": int(ck.step),
            "weights": ck.weights, "preset": getattr(ck.config, "preset", None)}


def sampler_record(sampler) -> dict[str, Any]:
    """A :class:`ddpm.config.SamplerConfig` (or a resolved sampler) as plain JSON."""
    import dataclasses

    if hasattr(sampler, "spec"):  # ResolvedSampler
        return {"sampler": sampler.name, "steps": sampler.steps, "spacing": sampler.spacing,
                "guidance": sampler.guidance, "clip_denoised": sampler.clip_denoised,
                "options": dict(sampler.options), "describe": sampler.describe()}
    return dataclasses.asdict(sampler)


def labels_record(labels, num_classes: int | None):
    """Labels as JSON: None (unconditional model), "null" (conditional model, null label), an int, or a
    list of ints (one per image)."""
    if num_classes is None:
        return None
    if labels is None:
        return "null"
    if isinstance(labels, int):
        return labels
    return [int(v) for v in labels]


def provenance(*, command: str | None = None, checkpoint=None, source: str | None = None, sampler=None,
               seed: int | None = None, labels=None, timings: dict | None = None, **extra) -> dict[str, Any]:
    """The record written into every output (see the module docstring)."""
    rec: dict[str, Any] = {"command": command if command is not None else command_line(),
                           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if checkpoint is not None:
        rec["checkpoint"] = checkpoint_record(checkpoint, source)
        num_classes = getattr(checkpoint.config.model, "num_classes", None)
        rec["labels"] = labels_record(labels, num_classes)
    if sampler is not None:
        rec["sampler"] = sampler_record(sampler)
    if seed is not None:
        rec["seed"] = int(seed)
    rec.update(extra)
    rec["versions"] = versions()
    if timings is not None:
        rec["seconds"] = {k: round(float(v), 3) for k, v in timings.items()}
        rec["machine"] = machine()  # timings mean little without the machine and its load
    return rec


# The command being run, set by ddpm.cli.main (which may be called with an argv of its own).
CURRENT_COMMAND: str | None = None


def command_line() -> str:
    import shlex

    if CURRENT_COMMAND is not None:
        return CURRENT_COMMAND
    argv = list(sys.argv)
    prog = "ddpm" if argv and (argv[0].endswith(("ddpm", "__main__.py")) or argv[0] == "-m") else None
    return " ".join(shlex.quote(a) for a in ([prog] + argv[1:] if prog else argv))


def png_info(record: dict | None):
    """A PIL ``PngInfo`` holding ``record`` as the text chunk ``ddpm`` (None: no metadata)."""
    if record is None:
        return None
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_KEY, json.dumps(record, default=_json_default))
    info.add_text("Software", f"ddpm {versions()['ddpm']}")
    return info


def npz_record(record: dict | None) -> dict:
    """``{"provenance": 0-d unicode array}`` to pass to ``np.savez`` (no pickled objects)."""
    if record is None:
        return {}
    import numpy as np

    return {NPZ_KEY: np.array(json.dumps(record, default=_json_default))}


def write_sidecar(path: str | os.PathLike, record: dict) -> Path:
    """``path.json`` beside an output."""
    p = Path(path)
    return write_json(p.with_name(p.name + SIDECAR_SUFFIX), record)


def sidecar_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def read_provenance(path: str | os.PathLike) -> dict | None:
    """The provenance record of a PNG, an .npz or a sidecar/JSON file written by ddpm (None if absent)."""
    p = Path(path)
    if p.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(p) as im:
            text = im.text.get(PNG_KEY)  # type: ignore[attr-defined]
        return json.loads(text) if text else None
    if p.suffix.lower() == ".npz":
        import numpy as np

        with np.load(p, allow_pickle=False) as f:
            return json.loads(str(f[NPZ_KEY])) if NPZ_KEY in f.files else None
    return json.loads(p.read_text())


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ------------------------------------------------------------------------------------ OS errors
_ADVICE = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some space (disk quota exceeded) or write somewhere else",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.EACCES: "check the permissions or write somewhere else",
    errno.EPERM: "check the permissions or write somewhere else",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ENOTDIR: "a part of the path is a file, not a folder; fix the path",
    errno.EISDIR: "it is a folder; give a file name",
    errno.EEXIST: "it already exists; choose another name",
    errno.ENOENT: "check that the path exists",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or use fewer workers",
    errno.EIO: "an input/output error from the device; check the disk",
    errno.EXDEV: "keep outputs and their folder on one file system",
}


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: what failed, on which path, and what to do."""
    code = e.errno
    reason = e.strerror or str(e) or type(e).__name__
    name = errno.errorcode.get(code, "") if code is not None else ""
    paths = [p for p in (e.filename, e.filename2) if p is not None]
    where = " -> ".join(os.fsdecode(p) if isinstance(p, bytes) else str(p) for p in paths)
    advice = _ADVICE.get(code, "check the path and try again")
    head = f"{where}: {reason}" if where else reason
    return f"{head}{f' ({name})' if name else ''}; {advice}"


__all__ = ["OutputError", "atomic_write", "atomic_dir", "staged_files", "write_text", "write_json",
           "check_output", "ensure_parent", "next_index", "provenance", "checkpoint_record", "sampler_record",
           "labels_record", "png_info", "npz_record", "write_sidecar", "sidecar_path", "read_provenance",
           "describe_os_error", "versions", "machine", "describe_machine", "FORMATS"]
