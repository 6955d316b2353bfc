"""The demo corpus: the PostgreSQL 15 manual from Debian.

:func:`fetch_postgres_manual` downloads the Debian package ``postgresql-doc-15`` with ``apt-get download``
(no root needed), unpacks it with ``dpkg-deb -x`` into a cache folder and returns the folder of HTML
pages. It runs once: later calls find the extracted pages and return at once. Extraction goes through
``atomic_write``, so an interrupted run never leaves a half-extracted manual behind. ``make demo`` and ``benchmarks/quality.py`` run ``embedforge run`` on that folder.

Example::

    from embedforge.demo_data import fetch_postgres_manual
    html = fetch_postgres_manual()  # .cache/demo/postgresql-doc-15/usr/share/doc/postgresql-doc-15/html
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from embedforge.atomic import atomic_write
from embedforge.errors import EmbedforgeError

logger = logging.getLogger(__name__)

PACKAGE = "postgresql-doc-15"
#: Where the HTML pages sit inside the unpacked package.
HTML_SUBDIR = Path("usr/share/doc/postgresql-doc-15/html")


class DemoDataError(EmbedforgeError, RuntimeError):
    """The demo manual cannot be fetched (no apt, unknown package, failed download or extraction)."""


def fetch_postgres_manual(cache_dir: Path | str = Path(".cache/demo")) -> Path:
    """Download and unpack the PostgreSQL 15 manual (Debian ``postgresql-doc-15``); return its HTML folder.

    Idempotent: if the pages are already extracted under ``cache_dir`` nothing is downloaded. Atomic:
    the package is unpacked into a temporary folder next to the target and renamed into place.

    Args:
        cache_dir: where to keep the unpacked package (``<cache_dir>/postgresql-doc-15/``).

    Returns:
        The folder holding the manual's ``*.html`` pages.

    Raises:
        DemoDataError: ``apt-get``/``dpkg-deb`` are missing (not a Debian-based system), the package is
            unknown because the package lists are empty (run ``sudo apt-get update``), or the download fails.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / PACKAGE
    html_dir = target / HTML_SUBDIR
    if html_dir.is_dir() and any(html_dir.glob("*.html")):
        return html_dir
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DemoDataError(
                f"`{tool}` not found: the demo manual comes from the Debian package {PACKAGE}, which needs a "
                "Debian or Ubuntu system. Point the demo at any folder of .html/.md/.txt files instead."
            )
    cache_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as tmp:
        tmp_path = Path(tmp)
        download = _apt_download(tmp_path)
        debs = sorted(tmp_path.glob(f"{PACKAGE}_*.deb"))
        if download.returncode != 0 or not debs:
            message = (download.stderr or download.stdout).strip()
            if re.search(r"Unable to locate package|no installation candidate|Can't select", message):
                hint = (
                    f"apt does not know {PACKAGE}: the package lists are probably empty. "
                    "Run `sudo apt-get update` once, then try again."
                )
            else:
                hint = f"`apt-get download {PACKAGE}` failed."
            raise DemoDataError(f"{hint}\n{message}")
        with atomic_write(target) as root:
            extract = subprocess.run(
                ["dpkg-deb", "-x", str(debs[-1]), str(root)], capture_output=True, text=True
            )
            if extract.returncode != 0 or not (root / HTML_SUBDIR).is_dir():
                raise DemoDataError(f"`dpkg-deb -x {debs[-1].name}` failed: {extract.stderr.strip()}")
    logger.info("fetched %s into %s in %.1fs", PACKAGE, target, time.perf_counter() - start)
    return html_dir


def _apt_download(folder: Path) -> subprocess.CompletedProcess:
    """``apt-get download``; on a fresh machine with empty package lists, refresh them once if we are root."""
    download = subprocess.run(["apt-get", "download", PACKAGE], cwd=folder, capture_output=True, text=True)
    unknown = re.search(r"Unable to locate package|no installation candidate", download.stderr or "")
    if download.returncode != 0 and unknown and hasattr(os, "geteuid") and os.geteuid() == 0:
        logger.info("apt does not know %s yet: running apt-get update once", PACKAGE)
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        download = subprocess.run(
            ["apt-get", "download", PACKAGE], cwd=folder, capture_output=True, text=True
        )
    return download
