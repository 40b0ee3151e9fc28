"""Hugging Face Hub paths: ``org/name[@revision]`` wherever a checkpoint path is accepted.

A path that exists locally is always taken as a local path. Otherwise a string shaped like a Hub
repository id is fetched with ``huggingface_hub.snapshot_download`` into the Hub client's own cache
(``HF_HUB_CACHE`` / ``HF_HOME``), so a second use is offline and ``HF_HUB_OFFLINE=1`` with a
populated cache works without a network. Only weights (safetensors), JSON configs and READMEs are
fetched: pickled ``.bin`` weights are never downloaded, let alone loaded.
"""

from __future__ import annotations

import re
from pathlib import Path

from ddpm.errors import CheckpointError

# org/name with the Hub's allowed characters, optionally @revision (a branch, tag or commit)
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_./-]+)?$")
ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.md"]


def looks_like_repo_id(path: str) -> bool:
    """``org/name`` or ``org/name@rev`` that is not an existing local path."""
    text = str(path)
    return bool(_REPO_ID.match(text)) and not Path(text).exists() and not text.startswith(("./", "../"))


def split_revision(repo: str) -> tuple[str, str | None]:
    name, _, revision = repo.partition("@")
    return name, revision or None


def download(repo: str, *, cache_dir: str | None = None) -> Path:
    """The local folder holding a snapshot of Hub repository ``repo`` (``org/name[@revision]``)."""
    repo_id, revision = split_revision(repo)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:
        raise CheckpointError(f"{repo} is neither a local path nor usable as a Hugging Face Hub id: "
                              "pip install huggingface_hub (or pass a local folder)") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                      cache_dir=cache_dir))
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{repo} is not in the Hub cache and the Hub cannot be reached (offline or "
                              "HF_HUB_OFFLINE=1); download it once with a network, or pass a local folder"
                              ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo}: revision {revision!r} does not exist on the Hub") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id} is not a Hub repository you can read (check the name, or log in "
                              "with `huggingface-cli login` for a private one)") from None
    except OSError as e:  # network errors surface as requests/httpx OSErrors
        raise CheckpointError(f"cannot download {repo} from the Hub ({e}); pass a local folder instead") from None


def resolve(path) -> Path:
    """``path`` as a local path, downloading it first when it is a Hub id and not a local path."""
    return download(str(path)) if looks_like_repo_id(str(path)) else Path(path)


def check_repo_id(repo: str) -> str:
    """``repo`` if it is a Hub repository id ``org/name`` (no revision), else a one-line error."""
    if "@" in repo or not _REPO_ID.match(repo):
        raise CheckpointError(f"--push-to-hub needs a Hub repository id org/name (letters, digits, '-', '_', '.'), "
                              f"got {repo!r}")
    return repo


def upload(folder, repo: str, *, private: bool = False, message: str = "ddpm export") -> str:
    """Upload ``folder`` to the Hub model repository ``repo`` (created if missing); returns its URL.

    Uses ``huggingface_hub.HfApi`` (credentials from ``huggingface-cli login`` or ``HF_TOKEN``); any
    failure (offline, no login, no permission) is one line naming the repository.
    """
    check_repo_id(repo)
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise CheckpointError("--push-to-hub needs huggingface_hub: pip install huggingface_hub") from None
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model", commit_message=message)
    except Exception as e:  # HTTP, auth and network errors come in many types
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"could not upload {folder} to the Hub repository {repo} ({first}); the folder "
                              "is written locally: check `huggingface-cli login` / HF_TOKEN and the network, "
                              "then upload it again") from None
    return f"https://huggingface.co/{repo}"
