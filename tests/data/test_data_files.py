"""lowbit.data.files: data-root resolution, md5 checks and the verified atomic download."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from lowbit.data.files import ENV_DATA_DIR, check_file, download, md5sum, resolve_data_dir
from lowbit.errors import DataError

PAYLOAD = bytes(range(256)) * 40 + b"tail"
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv(ENV_DATA_DIR)
    assert resolve_data_dir(None) == Path("data")


def test_md5sum_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    assert md5sum(path, chunk=7) == PAYLOAD_MD5


def test_check_file_accepts_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.bin"
    path.write_bytes(PAYLOAD)
    assert check_file(path, PAYLOAD_MD5, "get it somewhere") == path
    assert check_file(path, None, "get it somewhere") == path


def test_corrupt_copy_gives_one_line_error_naming_file_and_sum(tmp_path: Path) -> None:
    original = tmp_path / "labels.gz"
    original.write_bytes(PAYLOAD)
    copy = tmp_path / "copy" / "labels.gz"
    copy.parent.mkdir()
    shutil.copy(original, copy)
    data = bytearray(copy.read_bytes())
    data[100] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        check_file(copy, PAYLOAD_MD5, "download it from example.org")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(copy) in msg and PAYLOAD_MD5 in msg and md5sum(copy) in msg


def test_missing_file_says_how_to_obtain_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing data file .*nothere.bin; download it from X"):
        check_file(tmp_path / "nothere.bin", PAYLOAD_MD5, "download it from X")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_success_verifies_md5(http_server, tmp_path: Path) -> None:
    (http_server.root / "file.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "nested" / "file.bin"
    assert download(http_server.url + "file.bin", dest, PAYLOAD_MD5, timeout=10) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["file.bin"]  # no temp files left
    assert dest.stat().st_mode & 0o044 == 0o044  # readable by others, unlike a raw mkstemp file


def test_download_md5_mismatch_leaves_nothing(http_server, tmp_path: Path) -> None:
    (http_server.root / "file.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError, match=f"corrupt: md5 {PAYLOAD_MD5}, expected 0+"):
        download(http_server.url + "file.bin", dest, "0" * 32, timeout=10)
    assert not dest.exists()
    assert _leftovers(dest.parent) == []


def test_download_404_is_data_error(http_server, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "absent.bin"
    with pytest.raises(DataError, match="could not download .*absent.bin.*404"):
        download(http_server.url + "absent.bin", dest, None, timeout=10)
    assert _leftovers(dest.parent) == []


def test_download_cut_short_is_refused_even_without_md5(http_server, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "short.bin"
    with pytest.raises(DataError, match="cut short: 10 of 1000 bytes"):
        download(http_server.url + "short/file.bin", dest, None, timeout=10)
    assert _leftovers(dest.parent) == []


def test_download_unreachable_server_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="could not download"):
        download("http://127.0.0.1:1/x.bin", tmp_path / "x.bin", None, timeout=5)


def test_existing_good_file_is_not_downloaded_again(http_server, tmp_path: Path) -> None:
    (http_server.root / "file.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "file.bin"
    download(http_server.url + "file.bin", dest, PAYLOAD_MD5, timeout=10)
    assert http_server.requests == ["/file.bin"]
    download(http_server.url + "file.bin", dest, PAYLOAD_MD5, timeout=10)
    assert http_server.requests == ["/file.bin"]


def test_existing_corrupt_file_is_replaced(http_server, tmp_path: Path) -> None:
    (http_server.root / "file.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"stale partial copy")
    download(http_server.url + "file.bin", dest, PAYLOAD_MD5, timeout=10)
    assert dest.read_bytes() == PAYLOAD
    assert http_server.requests == ["/file.bin"]


def test_existing_corrupt_file_is_removed_when_download_fails(http_server,
                                                              tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"stale partial copy")
    with pytest.raises(DataError):
        download(http_server.url + "file.bin", dest, PAYLOAD_MD5, timeout=10)
    assert _leftovers(tmp_path) == ["served"]  # only the server's folder: dest is gone
