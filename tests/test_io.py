"""diffmem.io's atomic writes: the old file or the new one, never a torn one, with ordinary permissions."""

import os
import stat

import pytest

from diffmem import io as dio


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "sub" / "r.json"
    dio.write_json(p, {"a": 1})
    dio.write_json(p, {"a": 2, "b": float("inf")})
    assert dio.read_json(p) == {"a": 2, "b": "inf"}
    assert sorted(x.name for x in p.parent.iterdir()) == ["r.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "r.json"
    dio.write_json(p, {"a": 1})
    with pytest.raises(TypeError):  # not JSON: the error comes before anything is written
        dio.write_json(p, {"a": object()})
    assert dio.read_json(p) == {"a": 1}

    def interrupted(src, dst):  # killed between writing the temporary file and the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(dio.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dio.write_json(p, {"a": 2})
    monkeypatch.undo()
    assert dio.read_json(p) == {"a": 1}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_files_get_the_permissions_of_an_ordinary_open(tmp_path):
    old = os.umask(0o022)
    try:
        dio.atomic_write_bytes(tmp_path / "a.bin", b"x")
        os.umask(0o077)
        dio.atomic_write_bytes(tmp_path / "b.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644  # not mkstemp's 0600
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o600
