"""tools/check_build.py: passes a deployable `sam build` layout and names each way one can be broken."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tools.check_build import check_build, main

GOOD_SO = "_pydantic_core.cpython-313-aarch64-linux-gnu.so"


def write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A stand-in for layers/bridge/tiktok_bridge."""
    root = tmp_path / "src" / "tiktok_bridge"
    for module in ("__init__.py", "model.py", "sub/__init__.py"):
        write(root / module)
    return root


@pytest.fixture
def build(tmp_path: Path, package: Path) -> Path:
    """A build directory laid out like `sam build` output for template.yaml."""
    build = tmp_path / "build"
    write(build / "IngestFunction" / "app.py", "def lambda_handler(event, context):\n    return {}\n")
    write(build / "SenderFunction" / "app.py", "from tiktok_bridge.sender import lambda_handler\n")
    site = build / "BridgeLayer" / "python"
    for module in package.rglob("*.py"):
        write(site / module.relative_to(package.parent))
    write(site / "pydantic_core" / GOOD_SO)
    return build


def test_good_build_passes(build: Path, package: Path) -> None:
    assert check_build(build, package) == []


def rename_so(build: Path) -> None:
    so = build / "BridgeLayer/python/pydantic_core" / GOOD_SO
    so.rename(so.with_name("_pydantic_core.cpython-311-x86_64-linux-gnu.so"))


BREAKAGES: dict[str, tuple[Callable[[Path], object], str]] = {
    "x86 wheel": (rename_so, "BridgeLayer: _pydantic_core.cpython-311-x86_64-linux-gnu.so is not built for"),
    "no pydantic_core": (
        lambda b: (b / "BridgeLayer/python/pydantic_core" / GOOD_SO).unlink(),
        "BridgeLayer: no pydantic_core extension module",
    ),
    "boto3 bundled": (
        lambda b: write(b / "BridgeLayer/python/boto3/__init__.py"),
        "BridgeLayer: contains boto3",
    ),
    "module missing": (
        lambda b: (b / "BridgeLayer/python/tiktok_bridge/sub/__init__.py").unlink(),
        "BridgeLayer: domain modules missing: tiktok_bridge/sub/__init__.py",
    ),
    "handler missing": (
        lambda b: (b / "SenderFunction/app.py").unlink(),
        "SenderFunction: app.py is missing",
    ),
    "handler not defined": (
        lambda b: write(b / "IngestFunction/app.py", "def handler(event, context):\n    return {}\n"),
        "IngestFunction: app.py defines no lambda_handler",
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_broken_build_fails(build: Path, package: Path, breakage: str) -> None:
    breaking, expected = BREAKAGES[breakage]
    breaking(build)
    problems = check_build(build, package)
    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_main_on_a_missing_build_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nothing")]) == 1
    out = capsys.readouterr().out
    assert "IngestFunction: app.py is missing" in out
    assert "BridgeLayer: domain modules missing: tiktok_bridge/__init__.py" in out
