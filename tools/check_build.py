"""Check a `sam build` artifact: handlers, the whole domain package in the layer, Lambda-platform wheels.

Usage: `python tools/check_build.py [.aws-sam/build]`; exits 1 and prints each problem if any is found.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "layers" / "bridge" / "tiktok_bridge"
FUNCTIONS = ("IngestFunction", "SenderFunction")
LAYER = "BridgeLayer"
# Lambda python3.13 on arm64 imports only extension modules built for that interpreter and machine.
PLATFORM_TAG = "cpython-313-aarch64-linux-gnu"
RUNTIME_PROVIDED = ("boto3", "botocore")  # the Lambda runtime ships them; a layer copy only adds weight
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024  # Lambda's limit for a function plus its layers


def _binds_handler(source: str) -> bool:
    """Whether module source binds `lambda_handler` at top level (def, assignment or import)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == "lambda_handler":
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "lambda_handler" for t in targets):
                return True
        if isinstance(node, ast.ImportFrom) and any(
            (alias.asname or alias.name) == "lambda_handler" for alias in node.names
        ):
            return True
    return False


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_build(build_dir: Path, package: Path = PACKAGE) -> list[str]:
    """Problems in a `sam build` output directory, one line each; empty when the artifact is deployable."""
    problems: list[str] = []
    for function in FUNCTIONS:
        app = build_dir / function / "app.py"
        if not app.is_file():
            problems.append(f"{function}: app.py is missing")
        elif not _binds_handler(app.read_text(encoding="utf-8")):
            problems.append(f"{function}: app.py defines no lambda_handler")
    site = build_dir / LAYER / "python"
    missing = sorted(
        str(module.relative_to(package.parent))
        for module in package.rglob("*.py")
        if not (site / module.relative_to(package.parent)).is_file()
    )
    if missing:
        problems.append(f"{LAYER}: domain modules missing: {', '.join(missing)}")
    cores = sorted(p.name for p in (site / "pydantic_core").glob("_pydantic_core*.so"))
    if not cores:
        problems.append(f"{LAYER}: no pydantic_core extension module")
    problems += [f"{LAYER}: {so} is not built for {PLATFORM_TAG}" for so in cores if PLATFORM_TAG not in so]
    problems += [f"{LAYER}: contains {name}" for name in RUNTIME_PROVIDED if (site / name).exists()]
    for function in FUNCTIONS:
        if (size := _size(build_dir / function) + _size(site)) > MAX_UNZIPPED_BYTES:
            problems.append(f"{function}: {size} bytes unzipped with the layer, over Lambda's 250 MB")
    return problems


def main(argv: list[str]) -> int:
    """Check the build directory in `argv` (default .aws-sam/build); 1 if it has a problem."""
    build_dir = Path(argv[0] if argv else ".aws-sam/build")
    problems = check_build(build_dir)
    for problem in problems:
        print(f"{build_dir}: {problem}")
    if not problems:
        print(f"{build_dir}: handlers, domain package and arm64 cp313 wheels present; no boto3")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
