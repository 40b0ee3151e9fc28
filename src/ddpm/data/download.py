"""Where datasets live on disk, and checksum-verified downloads that fail offline with one clear line."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ddpm.errors import DataError

CHUNK = 1 << 20
TIMEOUT_S = 30


def data_root() -> Path:
    """``$DDPM_DATA`` if set, else ``~/.cache/ddpm``: the parent of the default dataset folders."""
    return Path(os.environ.get("DDPM_DATA") or "~/.cache/ddpm").expanduser()


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _urlopen(url: str):
    """The network call, one function so tests can replace it."""
    return urllib.request.urlopen(url, timeout=TIMEOUT_S)


def fetch(urls: list[str] | str, dest: Path, md5: str, *, what: str, manual: str) -> Path:
    """Fetch ``dest`` from the first of ``urls`` that works, check its md5, then move it into place.

    The bytes go to ``dest.part`` and are renamed only after the checksum matches, so an interrupted
    or corrupt download never looks like a finished one. ``manual`` is the user's way out (what to
    put where), appended to every failure message.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {dest.parent} for {what} ({e.strerror}): {manual}") from None
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in urls:
        try:
            h = hashlib.md5()
            with _urlopen(url) as response, open(part, "wb") as out:
                size = getattr(response, "headers", {}).get("Content-Length")
                # disable=None: a progress bar on a terminal, silence in logs and tests.
                with tqdm(total=int(size) if size else None, unit="B", unit_scale=True,
                          desc=f"downloading {url}", leave=False, disable=None) as bar:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        h.update(block)
                        out.write(block)
                        bar.update(len(block))
        except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, disk errors
            part.unlink(missing_ok=True)
            http_error = isinstance(e, urllib.error.HTTPError)  # keep its status code in the message
            errors.append(str(e if http_error else getattr(e, "reason", None) or e))
            continue
        if h.hexdigest() != md5:
            part.unlink(missing_ok=True)
            errors.append(f"md5 {h.hexdigest()} != expected {md5}")
            continue
        os.replace(part, dest)
        return dest
    reasons = "; ".join(dict.fromkeys(errors))  # mirrors usually fail for the same reason: say it once
    raise DataError(f"{what} not found at {dest} and download failed ({reasons}): {manual}")
