"""Documentation corpora from Debian packages, fetched without root.

:func:`fetch_debian_package` downloads a package with ``apt-get download``, unpacks it with ``dpkg-deb -x``
into a cache folder and returns a folder inside it: ``embedforge.demo.perlfaq_data`` uses it for ``perl-doc``
(the corpus of ``make demo`` and of the real-question benchmark). :func:`fetch_postgres_manual` does it for
the PostgreSQL 15 manual's HTML pages (``postgresql-doc-15``, the corpus of ``benchmarks/sdg_speed.py``).
Each runs once: later calls find the extracted files and return at once. Extraction goes through
``atomic_write``, so an interrupted run never leaves a half-extracted package behind.

Example::

    from embedforge.demo.debian import fetch_postgres_manual
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
    """A Debian package cannot be fetched (no apt, unknown package, failed download or extraction)."""


def fetch_postgres_manual(cache_dir: Path | str = Path(".cache/demo")) -> Path:
    """Download and unpack the PostgreSQL 15 manual (Debian ``postgresql-doc-15``); return its HTML folder.

    Idempotent: if the pages are already extracted under ``cache_dir`` nothing is downloaded. Atomic:
    the package is unpacked into a temporary folder next to the target and renamed into place.

    Args:
        cache_dir: where to keep the unpacked package (``<cache_dir>/postgresql-doc-15/``).

    Returns:
        The folder holding the manual's ``*.html`` pages.

    Raises:
        DemoDataError: see :func:`fetch_debian_package`.
    """
    return fetch_debian_package(PACKAGE, HTML_SUBDIR, "*.html", cache_dir)


def fetch_debian_package(package: str, subdir: Path, pattern: str, cache_dir: Path | str) -> Path:
    """``apt-get download`` + ``dpkg-deb -x`` ``package`` once into ``cache_dir``; return ``subdir`` inside it.

    Idempotent (a ``subdir`` holding files matching ``pattern`` is reused) and atomic (unpacked into a
    temporary folder that is renamed into place), so an interrupted run never leaves half a package.

    Raises:
        DemoDataError: ``apt-get``/``dpkg-deb`` are missing (not a Debian-based system), the package is
            unknown because the package lists are empty (run ``sudo apt-get update``), or the download fails.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / package
    wanted = target / subdir
    if wanted.is_dir() and any(wanted.glob(pattern)):
        return wanted
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DemoDataError(
                f"`{tool}` not found: {package} is a Debian package, which needs a Debian or Ubuntu system. "
                "Point embedforge at any folder of .html/.md/.txt files instead."
            )
    cache_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as tmp:
        tmp_path = Path(tmp)
        download = _apt_download(tmp_path, package)
        debs = sorted(tmp_path.glob(f"{package}_*.deb"))
        if download.returncode != 0 or not debs:
            message = (download.stderr or download.stdout).strip()
            if re.search(r"Unable to locate package|no installation candidate|Can't select", message):
                hint = (
                    f"apt does not know {package}: the package lists are probably empty. "
                    "Run `sudo apt-get update` once, then try again."
                )
            else:
                hint = f"`apt-get download {package}` failed."
            raise DemoDataError(f"{hint}\n{message}")
        with atomic_write(target) as root:
            extract = subprocess.run(
                ["dpkg-deb", "-x", str(debs[-1]), str(root)], capture_output=True, text=True
            )
            if extract.returncode != 0 or not (root / subdir).is_dir():
                raise DemoDataError(f"`dpkg-deb -x {debs[-1].name}` failed: {extract.stderr.strip()}")
    logger.info("fetched %s into %s in %.1fs", package, target, time.perf_counter() - start)
    return wanted


def _apt_download(folder: Path, package: str) -> subprocess.CompletedProcess:
    """``apt-get download``; on a fresh machine with empty package lists, refresh them once if we are root."""
    download = subprocess.run(["apt-get", "download", package], cwd=folder, capture_output=True, text=True)
    unknown = re.search(r"Unable to locate package|no installation candidate", download.stderr or "")
    if download.returncode != 0 and unknown and hasattr(os, "geteuid") and os.geteuid() == 0:
        logger.info("apt does not know %s yet: running apt-get update once", package)
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        download = subprocess.run(
            ["apt-get", "download", package], cwd=folder, capture_output=True, text=True
        )
    return download
