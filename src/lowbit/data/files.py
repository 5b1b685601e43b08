"""Dataset files: locating the data directory, md5 checks, and an optional verified download."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from lowbit.errors import DataError

log = logging.getLogger(__name__)

ENV_DATA_DIR = "LOWBIT_DATA"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """The data root: an explicit `data_dir`, else `$LOWBIT_DATA`, else `./data`."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    return Path(env).expanduser() if env else Path("data")


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: Path, md5: str | None, how_to_get: str) -> Path:
    """Return `path` if it exists and matches `md5`; otherwise raise a one-line `DataError`."""
    if not path.is_file():
        raise DataError(f"missing data file {path}; {how_to_get}")
    if md5 is not None:
        got = md5sum(path)
        if got != md5:
            raise DataError(
                f"corrupt data file {path}: md5 {got}, expected {md5}; "
                f"delete it and obtain it again ({how_to_get})"
            )
    return path


def download(url: str, dest: Path, md5: str | None, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` atomically (temp file + rename), verifying `md5` before the rename.

    An existing file with the right checksum is kept as is. A failed or corrupt download leaves
    nothing behind at `dest`.
    """
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s -> %s", url, dest)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        if md5 is not None and (got := md5sum(tmp)) != md5:
            raise DataError(f"download of {url} is corrupt: md5 {got}, expected {md5}")
        os.replace(tmp, dest)
    except OSError as exc:
        raise DataError(f"could not download {url}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest
