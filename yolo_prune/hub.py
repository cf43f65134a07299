"""Known pretrained weights: the manifest in ``weights/manifest.json`` and a verified downloader.

A download streams into a temporary file beside the destination while hashing it; only a file
with the manifest's exact size and sha256 is renamed into place, so a failed or tampered
download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from yolo_prune.errors import ConfigError, YoloPruneError
from yolo_prune.utils.io import atomic_open

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "weights" / "manifest.json"
WEIGHTS_DIR = REPO / "weights"


class DownloadError(YoloPruneError):
    """A download that failed or did not match its manifest entry."""


@dataclass(frozen=True)
class WeightsEntry:
    """One manifest entry."""

    name: str  # short name used on the command line, e.g. "yolov4-tiny"
    file: str  # file name on disk
    cfg: str  # the cfg these weights belong to, relative to the repository
    url: str  # where the canonical file is published
    bytes: int  # exact size
    sha256: str  # hex digest


def load_manifest(path: str | Path | None = None) -> dict[str, WeightsEntry]:
    """Entries of the weights manifest, keyed by name."""
    path = Path(path or os.environ.get("YOLO_PRUNE_MANIFEST", MANIFEST))
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: weights manifest not found") from None
    return {name: WeightsEntry(name=name, **fields) for name, fields in raw.items()}


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: str | Path, entry: WeightsEntry) -> None:
    """Raise :class:`DownloadError` unless ``path`` has the entry's size and sha256."""
    size = Path(path).stat().st_size
    if size != entry.bytes:
        raise DownloadError(f"{path}: {size:,} bytes, expected {entry.bytes:,} for {entry.name}")
    digest = sha256_of(path)
    if digest != entry.sha256:
        raise DownloadError(f"{path}: sha256 {digest} does not match {entry.sha256} ({entry.name})")


def download(
    name: str,
    *,
    dest_dir: str | Path | None = None,
    manifest: dict[str, WeightsEntry] | None = None,
    progress: bool = True,
) -> Path:
    """Download the weights called ``name`` (or reuse a verified copy) and return their path.

    Raises:
        ConfigError: ``name`` is not in the manifest.
        DownloadError: the network failed, or the bytes differ from the manifest's size/sha256.
    """
    manifest = manifest if manifest is not None else load_manifest()
    if name not in manifest:
        raise ConfigError(f"unknown weights {name!r}; choose one of: {', '.join(sorted(manifest))}")
    entry = manifest[name]
    dest = Path(dest_dir or WEIGHTS_DIR) / entry.file
    if dest.exists():
        verify(dest, entry)
        logger.info("%s: already downloaded and verified", dest)
        return dest
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(entry.url, timeout=60) as resp, atomic_open(dest) as out:
            bar = tqdm(
                total=entry.bytes, unit="B", unit_scale=True, desc=entry.file, disable=not progress
            )
            while block := resp.read(1 << 20):
                received += len(block)
                if received > entry.bytes:
                    raise DownloadError(
                        f"{entry.url}: more than the expected {entry.bytes:,} bytes"
                    )
                digest.update(block)
                out.write(block)
                bar.update(len(block))
            bar.close()
            if received != entry.bytes:
                raise DownloadError(
                    f"{entry.url}: got {received:,} bytes, expected {entry.bytes:,}"
                )
            if digest.hexdigest() != entry.sha256:
                raise DownloadError(
                    f"{entry.url}: sha256 {digest.hexdigest()} does not match the manifest's "
                    f"{entry.sha256}; the file was refused"
                )
    except OSError as exc:  # urllib.error.URLError is an OSError
        raise DownloadError(f"{entry.url}: download failed ({exc}); check the network") from None
    return dest


def resolve_weights(spec: str | Path) -> Path:
    """A weights path, or a manifest name (``yolov4-tiny``) downloaded and verified on demand."""
    p = Path(spec)
    if p.exists() or p.suffix:
        return p
    return download(str(spec))
