"""Dataset files: locating the data directory, md5 checks, and an optional verified download."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
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
    """Hex md5 digest of the file at `path`, read in `chunk`-byte blocks."""
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


def _fetch(url: str, out_path: Path, timeout: float) -> None:
    """Copy the body of `url` into `out_path`, refusing a body shorter than its Content-Length."""
    written = 0
    with open(out_path, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
        expected = resp.headers.get("Content-Length")
        while block := resp.read(1 << 20):
            out.write(block)
            written += len(block)
    # http.client returns b"" (no error) when the server closes early, so a truncated body
    # would otherwise pass whenever no md5 is known.
    if expected is not None and expected.isdigit() and written != int(expected):
        raise DataError(f"download of {url} was cut short: {written} of {expected} bytes; "
                        f"try again")


def _have(dest: Path, md5: str | None) -> bool:
    """Whether `dest` is already good; a corrupt copy is deleted so none survives a failure."""
    if not dest.is_file():
        return False
    if md5 is None or md5sum(dest) == md5:
        return True
    log.warning("%s has the wrong md5; downloading it again", dest)
    dest.unlink()
    return False


def download(url: str, dest: Path, md5: str | None, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` atomically (temp file + rename), verifying `md5` before the rename.

    An existing file with the right checksum is kept; one with the wrong checksum is removed
    first, so a failed or corrupt download leaves nothing behind at `dest`.

    Raises:
        DataError: server unreachable or erroring, a short body, or the wrong md5.
    """
    if _have(dest, md5):
        return dest
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        log.info("downloading %s -> %s", url, dest)
        _fetch(url, tmp, timeout)
        if md5 is not None and (got := md5sum(tmp)) != md5:
            raise DataError(f"download of {url} is corrupt: md5 {got}, expected {md5}; try again "
                            f"later or fetch the file by hand into {dest}")
        tmp.chmod(0o644)  # mkstemp makes 0600 files; data files are meant to be shared
        os.replace(tmp, dest)
    except DataError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: a bad URL
        raise DataError(f"could not download {url}: {exc}") from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return dest
