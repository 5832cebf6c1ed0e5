"""One download of one archive: a stall timeout, progress, an md5 check, and an atomic rename into place.

Several runs (or two ``reproduce`` processes) that need the same missing dataset used to download it each on
its own, into the same temp file. Now the caller holds a lock on ``<data>/.<archive>.lock``
(``kdbench.io.file_lock``, see ``data/datasets/cifar.py``): the first downloads into its own temp file and renames it
into place after the md5 check; the others wait on the lock and then find the file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdbench.errors import KdbenchError

# A read that brings no byte for this long fails the download (a black-holed proxy, a dead connection).
STALL_TIMEOUT_S = float(os.environ.get("KDBENCH_DOWNLOAD_TIMEOUT", "60"))
_CHUNK = 1 << 16


def fetch(
    url: str, dest: Path, md5: str, *, timeout_s: float | None = None, label: str = ""
) -> Path:
    """``dest``, downloaded from ``url`` unless it is there already with this md5; the caller holds the lock."""
    if dest.is_file() and md5sum(dest) == md5:
        return dest
    timeout = STALL_TIMEOUT_S if timeout_s is None else timeout_s
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress(label or dest.name, total) as advance:
                while block := response.read(_CHUNK):
                    out.write(block)
                    advance(len(block))
        actual = md5sum(tmp)
        if actual != md5:
            raise KdbenchError(
                f"the download of {url} has md5 {actual}, not the official {md5}: it was cut short or "
                "altered on the way. Run the same command again, or fetch the file by hand."
            )
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def extract(archive: Path, into: Path, folder: str) -> None:
    """Extract ``archive`` (a .tar.gz holding ``folder``) into ``into``, atomically: the folder appears whole or not."""
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=into))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(staging, filter="data")  # no absolute paths, links out, devices
        if not (staging / folder).is_dir():
            raise KdbenchError(
                f"{archive} does not hold the folder {folder}/: it is not the official archive."
            )
        target = into / folder
        if target.exists():  # an incomplete folder left by hand: the checked archive replaces it
            backup = Path(tempfile.mkdtemp(prefix=f".{folder}.old.", dir=into))
            os.replace(target, backup / folder)
        os.replace(staging / folder, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for old in into.glob(f".{folder}.old.*"):
            shutil.rmtree(old, ignore_errors=True)


def md5sum(path: Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _progress(label: str, total: int | None) -> Iterator:
    """A byte progress bar on stderr (plain lines when it is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(
        TextColumn("downloading {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
