"""Model ids on a hub other than Hugging Face: `modelscope:ORG/NAME` (or `model.hub: modelscope`) is downloaded
through the `modelscope` package into its cache, and the local directory it returns loads like any other.

Hugging Face ids are not downloaded here: transformers fetches them itself (and `check_reachable` checks its cache).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Optional

from ember.errors import ConfigError

log = logging.getLogger(__name__)

HUBS = ("huggingface", "modelscope")
EXTRAS = {"modelscope": "pip install 'ember[modelscope]' (the modelscope package)"}


def split_hub(name_or_path: str, hub: str = "huggingface") -> tuple[str, str]:
    """`(hub, id)`: a `HUB:` prefix (`modelscope:Qwen/Qwen2.5-0.5B-Instruct`) wins over `model.hub`."""
    prefix, sep, rest = name_or_path.partition(":")
    if sep and prefix in HUBS:
        return prefix, rest
    if hub not in HUBS:
        raise ConfigError(f"hub '{hub}' is not one of {', '.join(HUBS)}")
    return hub, name_or_path


def _modelscope_download(repo_id: str, revision: Optional[str]) -> str:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise ConfigError(f"the model '{repo_id}' is on ModelScope, which needs the modelscope package: "
                          f"{EXTRAS['modelscope']}") from None
    # modelscope's own cache (MODELSCOPE_CACHE, default ~/.cache/modelscope): downloads are shared with other tools
    return snapshot_download(repo_id, revision=revision)


# One download function per hub that Ember fetches itself: (repo id, revision) -> local directory.
DOWNLOADERS: dict[str, Callable[[str, Optional[str]], str]] = {"modelscope": _modelscope_download}


def download(hub: str, repo_id: str, revision: Optional[str] = None) -> str:
    """The local directory of `repo_id` on `hub` (downloaded once; later calls find it in the hub's cache).

    Raises:
        ConfigError: the id is not ORG/NAME, or the hub's package is not installed.
    """
    if repo_id.count("/") != 1 or repo_id.startswith("/") or repo_id.endswith("/"):
        raise ConfigError(f"{hub}:{repo_id} is not a {hub} model id: write {hub}:ORG/NAME")
    key = (hub, repo_id, revision)
    if key not in _FETCHED:  # config, tokenizer and weights of one load ask for it: one download (check) a process
        log.info("%s: fetching %s%s", hub, repo_id, f" at {revision}" if revision else "")
        _FETCHED[key] = str(DOWNLOADERS[hub](repo_id, revision))
    return _FETCHED[key]


_FETCHED: dict[tuple[str, str, Optional[str]], str] = {}
