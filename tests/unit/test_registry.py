import json

import pytest

from recserve.registry import Registry, RegistryError


def _art(tmp_path, text="x"):
    d = tmp_path / f"art-{text}"
    d.mkdir(exist_ok=True)
    (d / "model.bin").write_text(text)
    (d / "sub").mkdir(exist_ok=True)
    (d / "sub" / "a.txt").write_text("a")
    return d


def test_publish_latest_manifest(tmp_path):
    reg = Registry(tmp_path / "reg", keep=3)
    assert reg.latest("m") is None
    v1 = reg.publish("m", _art(tmp_path, "1"), metrics={"loss": 1.0}, lineage={"dataset": "d"})
    v2 = reg.publish("m", _art(tmp_path, "2"))
    assert (v1, v2) == ("v000001", "v000002")
    assert reg.latest("m") == v2
    man = reg.manifest("m", v1)
    assert man["metrics"] == {"loss": 1.0} and man["lineage"] == {"dataset": "d"}
    assert sorted(man["files"]) == ["model.bin", "sub/a.txt"]
    assert (reg.fetch("m") / "model.bin").read_text() == "2"


def test_keeps_last_n(tmp_path):
    reg = Registry(tmp_path / "reg", keep=3)
    for i in range(5):
        reg.publish("m", _art(tmp_path, str(i)))
    assert reg.versions("m") == ["v000003", "v000004", "v000005"]
    assert reg.latest("m") == "v000005"


class _FailingMoves:
    """The real filesystem, except that moving a version into place fails (a crash mid-publish)."""

    def __init__(self, fs):
        self._fs = fs

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def move(self, src, dst):
        raise OSError("disk full")


def test_failed_publish_leaves_registry_unchanged(tmp_path):
    reg = Registry(tmp_path / "reg")
    v1 = reg.publish("m", _art(tmp_path, "1"))
    real = reg.fs
    reg.fs = _FailingMoves(real)
    with pytest.raises(RegistryError, match="latest is unchanged"):
        reg.publish("m", _art(tmp_path, "2"))
    reg.fs = real
    assert reg.latest("m") == v1 and reg.versions("m") == [v1]
    assert not any((tmp_path / "reg" / "m" / ".staging").iterdir())


def test_half_written_version_is_invisible(tmp_path):
    reg = Registry(tmp_path / "reg")
    reg.publish("m", _art(tmp_path, "1"))
    (tmp_path / "reg" / "m" / "versions" / "v000002").mkdir()  # no manifest: an interrupted copy
    assert reg.versions("m") == ["v000001"]
    assert reg.publish("m", _art(tmp_path, "3")) == "v000003"


def test_unwritable_and_unknown(tmp_path):
    f = tmp_path / "file"
    f.write_text("not a dir")
    reg = Registry(f / "reg")
    with pytest.raises(RegistryError, match="not writable"):
        reg.check_writable("m")
    ok = Registry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="no published version"):
        ok.manifest("m")
    ok.publish("m", _art(tmp_path))
    with pytest.raises(RegistryError, match="not in registry"):
        ok.manifest("m", "v000042")
    (tmp_path / "reg" / "m" / "latest").write_text("{broken")
    with pytest.raises(RegistryError, match="unreadable"):
        ok.latest("m")


def test_rollback(tmp_path):
    reg = Registry(tmp_path / "reg")
    v1 = reg.publish("m", _art(tmp_path, "1"))
    reg.publish("m", _art(tmp_path, "2"))
    reg.set_latest("m", v1)
    assert json.loads((tmp_path / "reg" / "m" / "latest").read_text())["version"] == v1
