"""Which weight locations kdseg accepts: one rule for the registry, the download and a release.

Weights travel over https:// only. Plain http:// is allowed to this machine alone (the
tests' local server, a mirror on localhost), file:// for a copy on a shared drive, and a
registry may name a file relative to its own folder (never leaving it). A redirect is
held to the same rule, so an https:// location cannot be downgraded to http://.
"""

from __future__ import annotations

import urllib.parse
from pathlib import PurePosixPath
from typing import Optional

__all__ = ["LOCAL_HOSTS", "ALLOWED_LOCATIONS", "fetch_scheme", "is_registry_location", "is_publishable_url"]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Hosts plain http:// may reach."""

ALLOWED_LOCATIONS = "only https:// URLs (http:// only for 127.0.0.1, localhost or ::1) and file:// paths are allowed"
"""The rule in words, for error messages."""


def fetch_scheme(url: str) -> Optional[str]:
    """``"https"``, ``"http"`` (this machine only) or ``"file"`` when ``url`` may be fetched, else None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return "https"
    if parts.scheme == "http" and parts.hostname in LOCAL_HOSTS:
        return "http"
    if parts.scheme == "file" and parts.path:
        return "file"
    return None


def is_registry_location(url: str) -> bool:
    """A registry's weights location: a fetchable URL, or a path relative to the registry's folder."""
    if urllib.parse.urlsplit(url).scheme:
        return fetch_scheme(url) is not None
    path = PurePosixPath(url.replace("\\", "/"))
    return bool(url) and not path.is_absolute() and ".." not in path.parts and ":" not in url


def is_publishable_url(url: str) -> bool:
    """A download URL to publish in a release: https:// (or http:// to this machine) naming a file."""
    return fetch_scheme(url) in ("https", "http") and bool(urllib.parse.urlsplit(url).path.strip("/"))
