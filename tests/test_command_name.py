"""The launcher's 'Next:' hint names a command the user can run: `.venv/bin/ablate` until the venv is
activated (issue 22: `make demo` left `ablate ui` reading "command not found")."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ablate.launch.launcher import command_name


def _script(path: Path) -> Path:
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_an_unactivated_venv_is_named_by_its_path(tmp_path, monkeypatch):
    exe = _script(tmp_path / ".venv" / "bin" / "ablate")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert command_name(str(exe)) == os.path.join(".venv", "bin", "ablate")
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not below the working directory: the absolute path
    assert command_name(str(exe)) == str(exe.resolve())


def test_ablate_on_path_and_python_m_are_plain_ablate(tmp_path, monkeypatch):
    exe = _script(tmp_path / "bin" / "ablate")
    monkeypatch.setenv("PATH", f"{exe.parent}:/usr/bin:/bin")
    assert command_name(str(exe)) == "ablate"
    assert command_name("/src/ablate/cli.py") == "ablate"
