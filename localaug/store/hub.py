"""Hugging Face hub access for the store: a repo snapshot in the HF cache, errors made actionable.

huggingface_hub itself honours HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_HUB_OFFLINE and HF_TOKEN;
we only ask ``settings.hf_offline()`` so that an offline pull never tries the network.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from pathlib import Path

from localaug.core import settings
from localaug.core.errors import DownloadError, ModelNotFoundError, opt

# Only what conversion reads (plus the model card, for the license): never pickle weights.
ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "README.md",
]
COMMIT = re.compile(r"[0-9a-f]{40}")


def snapshot(repo: str, revision: str | None, *, asked_as: str) -> Path:
    """The HF cache snapshot folder of ``repo`` at ``revision`` (downloaded unless offline).

    The folder's name is the resolved commit hash. ``asked_as`` is how the user named the model,
    for the "how to bring it in" message.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hf

    offline = settings.hf_offline()
    incomplete = getattr(hf, "IncompleteSnapshotError", ())  # newer huggingface_hub only
    where = f"{repo}@{revision or 'main'}"
    try:
        folder = snapshot_download(repo, revision=revision, allow_patterns=ALLOW_PATTERNS, local_files_only=offline)
    except hf.RevisionNotFoundError as e:
        raise ModelNotFoundError(
            f"revision {revision!r} does not exist in {repo}: pass a branch, tag or commit of that repo as {opt('revision')}"
        ) from e
    except hf.RepositoryNotFoundError as e:  # also gated repos
        raise ModelNotFoundError(
            f"{repo} is not on {constants.ENDPOINT} or needs access: check the repo id (or HF_ENDPOINT), "
            "accept the model's terms on the hub and set HF_TOKEN"
        ) from e
    except incomplete as e:  # type: ignore[misc]
        raise ModelNotFoundError(
            f"the Hugging Face cache holds an incomplete copy of {where}: pull it again on a connected machine "
            "and copy the cache, or pass a complete local checkpoint folder"
        ) from e
    except hf.LocalEntryNotFoundError as e:
        if offline or isinstance(e.__cause__, hf.OfflineModeIsEnabled):
            raise ModelNotFoundError(
                f"{asked_as} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids "
                f"downloading it: run `localaug pull {asked_as}` on a connected machine and copy its LOCALAUG_HOME "
                f"(or its Hugging Face cache into HF_HOME) here, or pass a local checkpoint folder: "
                f"`localaug pull ./{repo.split('/')[-1]}`"
            ) from e
        raise DownloadError(
            f"cannot reach the Hugging Face hub at {constants.ENDPOINT} to fetch {where} ({_cause(e)}): check the "
            "network or set HF_ENDPOINT to a mirror; offline, set HF_HUB_OFFLINE=1 and bring the model in as a "
            "Hugging Face cache or a local checkpoint folder"
        ) from e
    except _http_errors() as e:
        raise DownloadError(
            f"downloading {where} from {constants.ENDPOINT} failed ({_cause(e)}): check the network, HF_ENDPOINT and "
            "free space in the Hugging Face cache (HF_HOME), then retry; offline, set HF_HUB_OFFLINE=1"
        ) from e
    return Path(folder)


def known_commit(repo: str, revision: str | None) -> str | None:
    """The commit ``revision`` names now, if that can be told without downloading weights."""
    if revision and COMMIT.fullmatch(revision):
        return revision
    if settings.hf_offline():
        try:
            return snapshot(repo, revision, asked_as=repo).name  # offline, this only reads the cache
        except ModelNotFoundError:
            return None
    try:
        from huggingface_hub import HfApi

        return HfApi().repo_info(repo, revision=revision).sha
    except Exception:  # noqa: BLE001 - a best-effort freshness check; the caller has a verified copy
        return None


def _http_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub's HTTP client changed across versions (requests, httpx, httpx2): catch each that exists.
    found: list[type[BaseException]] = [OSError]
    for module, attr in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), attr))
    return tuple(found)


def _cause(e: BaseException) -> str:
    inner = e.__cause__ or e
    text = str(inner).splitlines()[0] if str(inner) else ""
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__
