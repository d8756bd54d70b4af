"""The package as users get it: the wheel, installed (not editable) into a fresh virtual environment
with no source tree on its path, runs every command's --help and a tiny verified ONNX export.

The new environment reuses the installed dependencies instead of downloading gigabytes: a .pth
file puts a folder of links to this environment's site-packages entries on its path, leaving out
m2pt_deploy itself, its metadata and the editable-install hooks. pip installs ``wheel[cpu]`` with
--no-index, so it must find every requirement, the extra's included, already there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND_MODULES = sorted(p.stem for p in (ROOT / "m2pt_deploy" / "cli").glob("*.py")
                         if p.stem not in ("__init__", "common"))
# What the wheel needs from the tree; building from a copy keeps build/ and *.egg-info out of it.
_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "m2pt_deploy")
_OWN = ("m2pt_deploy", "m2pt_deploy-", "__editable__", "__editable___m2pt_deploy")


def _run(cmd: list[str | Path], *, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH, and a working directory outside the tree: only the installed package is importable.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in _SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    # Offline and fast: this environment's setuptools (torch requires >= 77, as the build does).
    # -v shows the backend's output, where setuptools prints its deprecation warnings.
    done = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-v",
                 "-w", tmp / "dist", src], cwd=tmp)
    warnings = sorted(set(re.findall(r"\b\w+Warning\b: .*", done.stdout + done.stderr)))
    assert not warnings, warnings  # e.g. "`project.license` as a TOML table is deprecated"
    (wheel,) = (tmp / "dist").glob("m2pt_deploy-*.whl")
    return wheel


def _dependency_links(folder: Path) -> Path:
    """Links to every installed distribution here except this project's own files."""
    folder.mkdir()
    for site in dict.fromkeys(Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")):
        for entry in site.iterdir():
            if entry.name.startswith(_OWN) or entry.suffix == ".pth" or (folder / entry.name).exists():
                continue
            (folder / entry.name).symlink_to(entry)
    return folder


def _new_venv(tmp: Path) -> tuple[Path, Path]:
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp).stdout.strip())
    (site / "_m2pt_test_dependencies.pth").write_text(f"{_dependency_links(tmp / 'deps')}\n")
    return venv, python


_CHECK = """
import importlib.metadata as md, json, sys
from packaging.requirements import Requirement
import m2pt_deploy
dist = md.distribution("m2pt-deploy")
unmet = []
for text in dist.requires or []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": "cpu"}):
        continue
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        unmet.append(f"{req} (not installed)")
        continue
    if not req.specifier.contains(version, prereleases=True):
        unmet.append(f"{req} (installed {version})")
print(json.dumps({"file": m2pt_deploy.__file__, "unmet": unmet, "license": dist.metadata["License-Expression"],
                  "files": [str(f) for f in dist.files or []], "owners": sorted(str(d.locate_file("")) for d in
                  md.distributions() if d.metadata["Name"] == "m2pt-deploy"),
                  "scripts": sorted(e.name for e in dist.entry_points if e.group == "console_scripts"),
                  "path": sys.path}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("package")
    wheel = _build_wheel(tmp)
    venv, python = _new_venv(tmp)
    # pip resolves the [cpu] extra against what the venv sees; --no-index: it may download nothing,
    # so a requirement the environment does not meet fails the install.
    done = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-index", f"{wheel}[cpu]"], cwd=tmp)
    facts = json.loads(_run([python, "-c", _CHECK], cwd=tmp).stdout)
    facts["pip"] = done.stdout
    return wheel, venv, facts


def test_the_wheel_carries_the_license_and_the_typing_marker(installed: tuple[Path, Path, dict]) -> None:
    wheel, _, facts = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "m2pt_deploy/py.typed" in names
    assert "m2pt_deploy/assets/aux_audio_vit.safetensors" in names
    assert {f"m2pt_deploy/assets/small/{m}.safetensors" for m in ("video", "points", "spectrogram")} <= set(names)
    assert "m2pt_deploy/assets/small/manifest.json" in names
    (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    text = zipfile.ZipFile(wheel).read(license_file).decode()
    assert text == (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert facts["license"] == "Apache-2.0"
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "docs/"))]


def test_installed_from_the_wheel_not_the_source_tree(installed: tuple[Path, Path, dict]) -> None:
    _, venv, facts = installed
    package = Path(facts["file"]).resolve()
    assert package.is_relative_to(venv.resolve()), package
    assert (package.parent / "py.typed").is_file()
    assert not any(Path(p).resolve() == ROOT for p in facts["path"] if p), facts["path"]
    assert len(facts["owners"]) == 1 and Path(facts["owners"][0]).resolve().is_relative_to(venv.resolve())


def test_the_cpu_extra_is_satisfied(installed: tuple[Path, Path, dict]) -> None:
    facts = installed[2]
    assert "Installing collected packages: m2pt-deploy\n" in facts["pip"], facts["pip"][-2000:]
    assert re.search(r"Requirement already satisfied: onnxruntime>=1\.18 in .*deps", facts["pip"])
    assert facts["unmet"] == []


def test_every_command_is_a_console_script_whose_help_runs(installed: tuple[Path, Path, dict]) -> None:
    _, venv, facts = installed
    expected = [f"m2pt-{m.replace('_', '-')}" for m in COMMAND_MODULES]
    assert facts["scripts"] == sorted(expected)
    for script in facts["scripts"]:
        done = _run([venv / "bin" / script, "--help"], cwd=venv)
        assert done.stdout.startswith(f"usage: {script} "), done.stdout[:200]


def test_a_tiny_export_from_the_installed_package(installed: tuple[Path, Path, dict], m2pt_ckpt: Path,
                                                  tmp_path: Path) -> None:
    _, venv, _ = installed
    out = tmp_path / "tiny.onnx"
    done = _run([venv / "bin" / "m2pt-export", "--format", "onnx", m2pt_ckpt, "-o", out], cwd=tmp_path)
    assert f"wrote {out}" in done.stdout and "PASSED: 3/3 checks passed" in done.stdout, done.stdout
    assert out.stat().st_size > 0
