"""The built artifact, run the way Lambda runs it.

The layer is built for this machine by the Makefile `sam build` runs (PLATFORM set to this machine's
manylinux tag, bytecode compiled by Python 3.13), with the oldest Python >= 3.9 at hand running pip, as a
user's `sam build` might. Both handlers are then imported and invoked under Python 3.13 in a subprocess whose
sys.path is Lambda's: the function directory (/var/task), the layer's python/ (/opt/python), the standard
library, and boto3 with its dependencies (/var/runtime; copied from the venv, as the runtime ships them).
Nothing from the venv or the source tree can fill a gap: a module the handlers need and the layer lacks fails.

They run against the local stack's resources in moto and the TikTok emulator, with the environment the
template gives each function (tiktok_bridge_cli.stack's FunctionSpec.environment, resolved against those
resources), on every sample in events/: ingest on events/apigw-*.json (signed with the webhook secret
`demo-webhook-secret`, carrying `Authorization: Bearer demo-webhook-token`), the sender on
events/sqs-sender.json and on what ingest enqueued.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from tiktok_bridge_cli.emulator import Emulator
from tiktok_bridge_cli.local import function_environment, moto_server, serving, sqs_record, url_of
from tiktok_bridge_cli.stack import FunctionSpec, Stack, create_stack, delete_stack

from tools.check_build import LAYER, RUNTIME_PROVIDED

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
REGION = "us-east-1"
SECRET = {
    "access_token": "artifact-token",
    "pixel_code": "PIXEL123",
    "event_set_id": "EVENTSET123",
    "webhook_secret": "demo-webhook-secret",  # what events/apigw-*.json are signed with
    "webhook_token": "demo-webhook-token",  # what they carry as `Authorization: Bearer`
}
PY313_CANDIDATES = (
    "python3.13",
    *sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.13*/bin/python3.13")),
)
BUILD_PYTHON_CANDIDATES = (
    "python3.9",
    *sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.9*/bin/python3.9")),
    sys.executable,
)

# Lambda's bootstrap in miniature: sys.path as Lambda's (task root, layer, stdlib, runtime), `import app`,
# then one invocation per stdin line. Replies go out on the original stdout; the function's own output
# (Powertools logs and metrics) goes to stderr.
RUNNER = r"""
import json, os, sys, time, traceback
task_root, layer, runtime = sys.argv[1:4]
sys.path[:0] = [task_root, layer]
sys.path.append(runtime)
protocol = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

def reply(message):
    protocol.write(json.dumps(message) + "\n")
    protocol.flush()

class Context:
    def __init__(self, request_id, timeout_s):
        self.function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = int(os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"])
        self.invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:" + self.function_name
        self.aws_request_id = request_id
        self.log_group_name = "/aws/lambda/" + self.function_name
        self.log_stream_name = "artifact"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))

try:
    import app
    handler = app.lambda_handler
except Exception as exc:
    traceback.print_exc()
    reply({"error": "Runtime.ImportModuleError: %s: %s" % (type(exc).__name__, exc)})
    sys.exit(1)
reply({"ready": True, "version": list(sys.version_info[:2]), "path": sys.path, "prefix": sys.base_prefix,
       "modules": sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})})
for line in sys.stdin:
    request = json.loads(line)
    try:
        result = handler(request["event"], Context(request["request_id"], request["timeout_s"]))
    except Exception as exc:
        traceback.print_exc()
        reply({"error": "%s: %s" % (type(exc).__name__, exc)})
    else:
        reply({"result": result})
"""


def _python(candidates: tuple[str, ...], check: str) -> str | None:
    """The first candidate that runs and for which `check` (a Python expression) holds."""
    for candidate in candidates:
        try:
            answer = subprocess.run(
                [candidate, "-c", f"import sys; print({check} and sys.executable or '')"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if answer.returncode == 0 and answer.stdout.strip():
            return answer.stdout.strip()
    return None


PY313 = os.environ.get("PYTHON313") or _python(PY313_CANDIDATES, "sys.version_info[:2] == (3, 13)")
pytestmark = pytest.mark.skipif(
    PY313 is None,
    reason="no Python 3.13 (python3.13 on PATH, ~/.pyenv/versions/3.13*, or PYTHON313=...): the artifact "
    "test runs the handlers under Lambda's Python version",
)


@dataclass(frozen=True)
class Artifact:
    functions: dict[str, Path]  # logical id -> built function directory (Lambda's /var/task)
    layer: Path  # the layer's python/ (Lambda's /opt/python)
    runtime: Path  # boto3 and its dependencies (Lambda's /var/runtime)


def _make(target: str, *variables: str, cwd: Path, makefile: Path) -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "-f", str(makefile), target, *variables],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"make {target} failed:\n{done.stdout}\n{done.stderr}"


def _copy_runtime_packages(into: Path) -> None:
    """boto3 and its dependencies at the venv's (locked) versions: pure Python, as in Lambda's runtime."""
    for name in RUNTIME_PROVIDED:
        distribution = importlib.metadata.distribution(name)
        for file in distribution.files or ():
            source = Path(str(distribution.locate_file(file)))
            if "__pycache__" in file.parts or ".." in file.parts or not source.is_file():
                continue
            (into / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / file)


def build_artifact(into: Path, python313: str) -> Artifact:
    """Both functions and the layer, built for this machine by the Makefiles `sam build` runs."""
    machine = {"arm64": "aarch64", "amd64": "x86_64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    build_python = _python(BUILD_PYTHON_CANDIDATES, "sys.version_info >= (3, 9)") or sys.executable
    layer = into / LAYER
    _make(
        f"build-{LAYER}",
        f"ARTIFACTS_DIR={layer}",
        f"PLATFORM=manylinux2014_{machine}",
        f"PYTHON={build_python}",
        f"PYTHON313={python313}",
        cwd=ROOT / "layers" / "bridge",
        makefile=ROOT / "layers" / "bridge" / "Makefile",
    )
    functions = {}
    for logical_id, folder in (("IngestFunction", "ingest"), ("SenderFunction", "sender")):
        functions[logical_id] = into / logical_id
        functions[logical_id].mkdir()
        _make(
            f"build-{logical_id}",
            f"ARTIFACTS_DIR={functions[logical_id]}",
            cwd=ROOT / "functions" / folder,
            makefile=ROOT / "functions" / folder / "Makefile",
        )
    runtime = into / "runtime"
    _copy_runtime_packages(runtime)
    subprocess.run(
        [python313, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash", str(runtime)],
        check=True,
    )
    return Artifact(functions, layer / "python", runtime)


class Instance:
    """One cold Lambda instance of a built function under Python 3.13: import, then invocations one by one."""

    def __init__(self, artifact: Artifact, spec: FunctionSpec, environment: dict[str, str], python313: str):
        self.spec = spec
        task_root = artifact.functions[spec.logical_id]
        self.process = subprocess.Popen(
            [
                python313,
                "-I",
                "-S",
                "-B",
                "-c",
                RUNNER,
                str(task_root),
                str(artifact.layer),
                str(artifact.runtime),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **environment,
                "LAMBDA_TASK_ROOT": str(task_root),
                "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
            },
            cwd=task_root,
        )
        self._logs: list[str] = []  # drained all along: a full stderr pipe would block the function
        self._drain = threading.Thread(target=self._logs.extend, args=(self.process.stderr,), daemon=True)
        self._drain.start()
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            return {"error": f"the process exited ({self.process.wait(timeout=30)})"}
        reply: dict[str, Any] = json.loads(line)
        return reply

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        request = {"event": event, "request_id": str(uuid.uuid4()), "timeout_s": self.spec.timeout_s}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def stop(self) -> str:
        """End the instance (closing stdin ends the runner's loop); its log output."""
        assert self.process.stdin is not None and self.process.stdout is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        finally:
            self.process.kill()
            self.process.stdout.close()
            self._drain.join()
        return "".join(self._logs)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    assert PY313 is not None
    return build_artifact(tmp_path_factory.mktemp("artifact"), PY313)


@dataclass
class Services:
    stack: Stack
    emulator: Emulator
    moto_url: str

    def environment(self, spec: FunctionSpec) -> dict[str, str]:
        """The function's environment as the local stack gives it: the template's variables, boto3 at moto."""
        environment = function_environment(spec, self.moto_url, {"TIKTOK_BASE_URL": self.emulator.url})
        return {k: v for k, v in environment.items() if not k.startswith("PYTHON")}


@pytest.fixture
def services() -> Iterator[Services]:
    """moto with the template's queues, table and secrets (SECRET in them) and the TikTok emulator."""
    session = boto3.session.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name=REGION
    )
    source_ids = [SECRET["pixel_code"], SECRET["event_set_id"]]
    moto = moto_server(0)
    with Emulator(access_token=SECRET["access_token"], source_ids=source_ids) as tiktok, serving(moto):
        moto_url = url_of(moto)
        stack = create_stack(
            region=REGION,
            endpoint_url=moto_url,
            session=session,
            parameters={"TikTokBaseUrl": tiktok.url},
            stack_name=f"artifact-{uuid.uuid4().hex[:8]}",
        )
        stack.put_secret(SECRET)
        try:
            yield Services(stack, tiktok, moto_url)
        finally:
            delete_stack(stack)


def _load(path: Path) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return event


def _queued(stack: Stack) -> list[dict[str, Any]]:
    sqs = stack.client("sqs")
    messages: list[dict[str, Any]] = []
    while batch := sqs.receive_message(
        QueueUrl=stack.queue_url,
        MaxNumberOfMessages=10,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
        VisibilityTimeout=300,
    ).get("Messages", []):
        messages += batch
    return messages


def assert_lambda_like(instance: Instance, artifact: Artifact) -> None:
    """The instance imported its handler under Python 3.13 with Lambda's sys.path: the task root, the layer,
    the standard library, boto3; every module it loaded came from there."""
    ready = instance.ready
    assert ready.get("ready"), f"{instance.spec.logical_id}: {ready}"
    assert ready["version"] == [3, 13]
    task_root = str(artifact.functions[instance.spec.logical_id])
    path, stdlib = ready["path"], ready["prefix"]
    assert path[:2] == [task_root, str(artifact.layer)] and path[-1] == str(artifact.runtime), path
    assert all(entry.startswith(stdlib) and "site-packages" not in entry for entry in path[2:-1]), path
    roots = (task_root, str(artifact.layer), str(artifact.runtime), stdlib)
    outside = [file for file in ready["modules"] if not file.startswith(roots) or "site-packages" in file]
    assert not outside, f"{instance.spec.logical_id} loaded modules from outside the artifact: {outside[:5]}"


def test_handlers_run_from_the_artifact_under_python_313(artifact: Artifact, services: Services) -> None:
    assert PY313 is not None
    samples = sorted(EVENTS.glob("apigw-*.json"))
    assert samples, "no events/apigw-*.json samples"
    ingest = Instance(artifact, services.stack.ingest, services.environment(services.stack.ingest), PY313)
    try:
        assert_lambda_like(ingest, artifact)
        answers = {sample.name: ingest.invoke(_load(sample)) for sample in samples}
    finally:
        ingest_logs = ingest.stop()
    accepted = 0
    for name, answer in answers.items():
        assert "result" in answer, f"{name}: {answer}\n{ingest_logs}"
        response = answer["result"]
        if name == "apigw-bad-signature.json":
            assert response["statusCode"] == 401, f"{name}: {response}"
            continue
        assert response["statusCode"] == 200, f"{name}: {response}\n{ingest_logs}"
        body = json.loads(response["body"])
        assert body["rejected"] == [], f"{name}: {body}"
        accepted += body["accepted"]
    queued = _queued(services.stack)
    assert accepted > 0
    assert len(queued) == accepted

    sender = Instance(artifact, services.stack.sender, services.environment(services.stack.sender), PY313)
    try:
        assert_lambda_like(sender, artifact)
        sample = sender.invoke(_load(EVENTS / "sqs-sender.json"))
        from_ingest = sender.invoke(
            {"Records": [sqs_record(message, services.stack.queue_arn, REGION) for message in queued]}
        )
    finally:
        sender_logs = sender.stop()
    sample_records = _load(EVENTS / "sqs-sender.json")["Records"]
    assert sample == {"result": {"batchItemFailures": []}}, f"{sample}\n{sender_logs}"
    assert from_ingest == {"result": {"batchItemFailures": []}}, f"{from_ingest}\n{sender_logs}"
    delivered = [
        event for request in services.emulator.accepted_requests() for event in request.get("data", [])
    ]
    assert len(delivered) == len(sample_records) + accepted, services.emulator.snapshot()


@pytest.mark.parametrize(
    ("dependency", "function"),
    [("pydantic_core", "ingest"), ("pydantic_core", "sender"), ("yaml", "ingest"), ("httpx", "sender")],
)
def test_a_dependency_missing_from_the_layer_fails_the_cold_start(
    artifact: Artifact, services: Services, tmp_path: Path, dependency: str, function: str
) -> None:
    """The same layer without a package the handler imports: its cold start fails on exactly that (so nothing
    outside the artifact, such as the venv, stands in for a missing module)."""
    assert PY313 is not None
    broken = Artifact(artifact.functions, tmp_path / "python", artifact.runtime)
    shutil.copytree(artifact.layer, broken.layer, symlinks=True)
    shutil.rmtree(broken.layer / dependency)
    spec = getattr(services.stack, function)
    instance = Instance(broken, spec, services.environment(spec), PY313)
    logs = instance.stop()
    assert instance.ready.get("error", "").startswith("Runtime.ImportModuleError: ModuleNotFoundError"), logs
    assert f"No module named '{dependency}" in instance.ready["error"], instance.ready
