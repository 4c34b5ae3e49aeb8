"""Check a `sam build` artifact: handlers, deployed domain modules, locked Lambda-platform wheels, bytecode.

Usage: `python tools/check_build.py [.aws-sam/build]`; exits 1 and prints each problem if any is found.

The layer must hold exactly the versions in requirements/runtime.lock (which requirements/dev.lock, the
venv's lock, must agree with), no package the Lambda runtime provides, no module only the local tools use,
only bytecode that Lambda's Python 3.13 reads (unchecked-hash .pyc files for every module, or none at all),
and stay within a size budget.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "layers" / "bridge" / "tiktok_bridge"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
DEV_LOCK = ROOT / "requirements" / "dev.lock"
FUNCTIONS = ("IngestFunction", "SenderFunction")
LAYER = "BridgeLayer"
# Lambda python3.13 on arm64 imports only extension modules built for that interpreter and machine.
PLATFORM_TAG = "cpython-313-aarch64-linux-gnu"
# What the Lambda runtime provides (boto3 and its dependencies), distribution -> top-level module. A layer
# copy only adds weight; `make lock` leaves them out of requirements/runtime.lock.
RUNTIME_PROVIDED = {
    "boto3": "boto3",
    "botocore": "botocore",
    "s3transfer": "s3transfer",
    "jmespath": "jmespath",
    "python-dateutil": "dateutil",
    "six": "six",
    "urllib3": "urllib3",
}
# Modules of tiktok_bridge_cli (cli/): the command line, local stack and emulator; Lambda never imports them.
LOCAL_ONLY_MODULES = ("cli", "preview", "emulator", "local", "stack", "demo", "forget", "dlq")
LOCAL_ONLY_PACKAGE = "tiktok_bridge_cli"
# Bytecode Lambda's Python 3.13 reads: cache tag cpython-313, its magic number, and unchecked-hash
# invalidation (PEP 552 flags 0b01), so the zip's timestamps do not matter and nothing is recompiled on a
# read-only /opt.
PYC_TAG = "cpython-313"
PYC_MAGIC = (3571).to_bytes(2, "little") + b"\r\n"
PYC_UNCHECKED_HASH = 0b01
# The layer measured 24.8 MB unzipped (locked wheels with phonenumberslite, 3.13 bytecode; it was 69.8 MB with
# phonenumbers and Python 3.11 bytecode): past this budget, something unwanted came in.
MAX_LAYER_BYTES = 28 * 1024 * 1024
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024  # Lambda's limit for a function plus its layers
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


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


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """`name==version` pins of a requirements lock (hash and comment lines skipped), by normalized name.

    A universal lock may pin a package twice under different markers; every version it pins is kept, joined by
    " | " (e.g. "3.6.1 | 3.7").
    """
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := _PIN.match(line):
            name, version = normalize(match[1]), match[2]
            pins[name] = f"{pins[name]} | {version}" if name in pins else version
    return pins


def installed_versions(site: Path) -> dict[str, str]:
    """Distributions installed in a site directory (their *.dist-info METADATA), by normalized name."""
    versions: dict[str, str] = {}
    for metadata in site.glob("*.dist-info/METADATA"):
        fields = dict(
            line.split(": ", 1)
            for line in metadata.read_text(encoding="utf-8").split("\n\n", 1)[0].splitlines()
            if ": " in line
        )
        versions[normalize(fields.get("Name", metadata.parent.name))] = fields.get("Version", "?")
    return versions


def lock_problems(site: Path, lock: Path) -> list[str]:
    """Where the layer's distributions differ from the lock: another version, missing, or not locked."""
    if not lock.is_file():
        return [f"{LAYER}: no lock file {lock}"]
    locked, installed = read_lock(lock), installed_versions(site)
    problems = [
        f"{LAYER}: {name} {installed[name]} installed, the lock has {version}"
        for name, version in sorted(locked.items())
        if name in installed and installed[name] != version
    ]
    if missing := sorted(set(locked) - set(installed)):
        problems.append(f"{LAYER}: locked but not installed: {', '.join(missing)}")
    if unlocked := sorted(set(installed) - set(locked)):
        problems.append(f"{LAYER}: installed but not in the lock: {', '.join(unlocked)}")
    return problems


def lock_agreement(runtime_lock: Path = RUNTIME_LOCK, dev_lock: Path = DEV_LOCK) -> list[str]:
    """Runtime packages the venv's lock pins at another version than the layer's lock (or not at all)."""
    runtime, dev = read_lock(runtime_lock), read_lock(dev_lock)
    return [
        f"{dev_lock.name} pins {name} {dev.get(name, '(nothing)')}, {runtime_lock.name} {version}: "
        "run make lock"
        for name, version in sorted(runtime.items())
        if dev.get(name) != version
    ]


def _examples(paths: Iterable[Path], base: Path) -> str:
    listed = sorted(str(p.relative_to(base)) for p in paths)
    return ", ".join(listed[:3]) + (f" and {len(listed) - 3} more" if len(listed) > 3 else "")


def bytecode_problems(build_dir: Path, site: Path) -> list[str]:
    """Bytecode Lambda's Python 3.13 would not use, and layer modules lacking it once any is there."""
    foreign, checked = [], []
    for pyc in build_dir.rglob("*.pyc"):
        head = pyc.read_bytes()[:8]
        if (
            pyc.parent.name != "__pycache__"
            or pyc.name.split(".")[-2:] != [PYC_TAG, "pyc"]
            or head[:4] != PYC_MAGIC
        ):
            foreign.append(pyc)
        elif int.from_bytes(head[4:8], "little") != PYC_UNCHECKED_HASH:
            checked.append(pyc)
    problems = []
    if foreign:
        problems.append(f"{len(foreign)} .pyc files not for Python 3.13: {_examples(foreign, build_dir)}")
    if checked:
        problems.append(
            f"{len(checked)} .pyc files not compiled with --invalidation-mode unchecked-hash: "
            f"{_examples(checked, build_dir)}"
        )
    if any(pyc not in foreign for pyc in site.rglob(f"*.{PYC_TAG}.pyc")):
        uncompiled = [
            module
            for module in site.rglob("*.py")
            if not (module.parent / "__pycache__" / f"{module.stem}.{PYC_TAG}.pyc").is_file()
        ]
        if uncompiled:
            problems.append(
                f"{LAYER}: {len(uncompiled)} modules without 3.13 bytecode: {_examples(uncompiled, site)}"
            )
    return problems


def check_build(
    build_dir: Path,
    package: Path = PACKAGE,
    lock: Path = RUNTIME_LOCK,
    max_layer_bytes: int = MAX_LAYER_BYTES,
) -> list[str]:
    """Problems in a `sam build` output directory, one line each; empty when the artifact is deployable."""
    problems: list[str] = []
    for function in FUNCTIONS:
        app = build_dir / function / "app.py"
        if not app.is_file():
            problems.append(f"{function}: app.py is missing")
        elif not _binds_handler(app.read_text(encoding="utf-8")):
            problems.append(f"{function}: app.py defines no lambda_handler")
    site = build_dir / LAYER / "python"
    local_only = {package / f"{name}.py" for name in LOCAL_ONLY_MODULES}
    missing = sorted(
        str(module.relative_to(package.parent))
        for module in package.rglob("*.py")
        if module not in local_only and not (site / module.relative_to(package.parent)).is_file()
    )
    if missing:
        problems.append(f"{LAYER}: domain modules missing: {', '.join(missing)}")
    shipped = [site / package.name / f"{name}.py" for name in LOCAL_ONLY_MODULES]
    found = [str(p.relative_to(site)) for p in shipped if p.is_file()]
    found += [f"{LOCAL_ONLY_PACKAGE}/"] if (site / LOCAL_ONLY_PACKAGE).exists() else []
    if found:
        problems.append(f"{LAYER}: local-only modules in the layer: {', '.join(found)}")
    cores = sorted(p.name for p in (site / "pydantic_core").glob("_pydantic_core*.so"))
    if not cores:
        problems.append(f"{LAYER}: no pydantic_core extension module")
    problems += [f"{LAYER}: {so} is not built for {PLATFORM_TAG}" for so in cores if PLATFORM_TAG not in so]
    problems += [
        f"{LAYER}: contains {module}"
        for module in RUNTIME_PROVIDED.values()
        if (site / module).exists() or (site / f"{module}.py").exists()
    ]
    problems += lock_problems(site, lock)
    problems += bytecode_problems(build_dir, site)
    if (layer_size := _size(site)) > max_layer_bytes:
        problems.append(f"{LAYER}: {layer_size:,} bytes unzipped, over the budget of {max_layer_bytes:,}")
    for function in FUNCTIONS:
        if (size := _size(build_dir / function) + layer_size) > MAX_UNZIPPED_BYTES:
            problems.append(f"{function}: {size} bytes unzipped with the layer, over Lambda's 250 MB")
    return problems


def main(argv: list[str]) -> int:
    """Check the build directory in `argv` (default .aws-sam/build) and the locks; 1 on any problem."""
    build_dir = Path(argv[0] if argv else ".aws-sam/build")
    problems = check_build(build_dir) + lock_agreement()
    for problem in problems:
        print(f"{build_dir}: {problem}")
    site = build_dir / LAYER / "python"
    if not problems:
        print(
            f"{build_dir}: handlers, domain modules, the locked arm64 cp313 wheels ({_size(site):,} bytes); "
            "no boto3, no local-only module"
        )
    if site.is_dir() and not any(site.rglob("*.pyc")):
        print(
            f"{build_dir}: note: the layer has no bytecode (built without Python 3.13), so each cold start "
            "compiles it"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
