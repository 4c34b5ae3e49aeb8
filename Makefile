# Every target bootstraps the virtualenv it needs; `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# SAM CLI has a venv of its own inside .venv: it pins boto3, click, pydantic... which must not hold the bridge back.
SAM_VENV := $(VENV)/sam
SAM_STAMP := $(SAM_VENV)/.installed
PIP_INSTALL := -m pip install -q --disable-pip-version-check
# The locks (`make lock` writes them from pyproject.toml, with hashes): runtime.lock is what the Lambda layer installs,
# for Lambda's platform (Python 3.13, arm64) and without what the Lambda runtime provides (boto3 and its
# dependencies); dev.lock is the venv (the runtime packages at runtime.lock's versions, plus boto3 and the dev tools,
# for any platform); sam.lock is SAM CLI's venv.
LOCKS := requirements/runtime.lock requirements/dev.lock

.PHONY: install demo test unit lint build-check bench chaos fuzz lock dashboard clean

# The venv is exactly dev.lock (so the tests run the runtime packages the layer ships), rebuilt from scratch when a
# lock or pyproject.toml changes.
$(STAMP): pyproject.toml $(LOCKS)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { echo "the venv needs \
	Python >= 3.11 (pyproject.toml); run: make PYTHON=python3.11 ..." >&2; exit 1; }
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python $(PIP_INSTALL) --upgrade pip
	$(BIN)/python $(PIP_INSTALL) --require-hashes --no-deps -r requirements/dev.lock
	$(BIN)/python $(PIP_INSTALL) --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

$(SAM_STAMP): requirements/sam.lock $(STAMP)
	$(BIN)/python -m venv --clear $(SAM_VENV)
	$(SAM_VENV)/bin/python $(PIP_INSTALL) --require-hashes --no-deps -r requirements/sam.lock
	$(SAM_VENV)/bin/python -m pip check
	touch $@

install: $(STAMP) $(SAM_STAMP)

demo: $(STAMP)
	$(BIN)/tiktok-bridge demo

# SAM CLI offline: a region, no telemetry, no credentials needed.
SAM := SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1 $(SAM_VENV)/bin/sam

lint: $(STAMP) $(SAM_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy layers/bridge cli functions tests tools
	$(BIN)/cfn-lint template.yaml
	$(SAM) validate --lint --region us-east-1
	$(BIN)/python tools/lint_template.py template.yaml

# `sam build` without Docker or Python 3.13 (makefile builds, arm64 cp313 wheels from requirements/runtime.lock),
# then check the artifact against the lock: versions, bytecode, local-only modules, size.
build-check: $(STAMP) $(SAM_STAMP)
	PYTHON=$(abspath $(BIN)/python) $(SAM) build --template-file template.yaml
	$(BIN)/python tools/check_build.py .aws-sam/build

# Figures in bench/results.json and a table; a few minutes on 2 cores. Not part of `make test` (a cheap
# --quick run is): timings need a quiet machine.
bench: $(STAMP)
	$(BIN)/python tools/bench.py

# 50,000 events through the local stack under TikTok, SQS and process faults; prints the tally, exit 1 on a
# loss. Several minutes; a small version runs in `make test` (tests/e2e/test_chaos.py).
chaos: $(STAMP)
	$(BIN)/python tools/chaos.py

# The fuzz tests with many more examples than `make test` runs.
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-3000} $(BIN)/pytest tests/unit/test_fuzz_ingest.py tests/unit/test_fuzz_sender.py

unit: $(STAMP)
	$(BIN)/pytest

test: lint unit build-check

# Re-resolve the locks from pyproject.toml (kept versions stay unless pyproject.toml excludes them; `make lock
# UPGRADE=1` takes the newest allowed). The runtime lock comes first, so no dev tool can hold it back: dev.lock is
# resolved under its pins. Needs PyPI.
UV_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --custom-compile-command "make lock" \
	$(if $(UPGRADE),--upgrade)
# Redraw docs/dashboard.png: template.yaml's dashboard from a local run (about a minute).
dashboard: $(STAMP)
	$(BIN)/python tools/render_dashboard.py

lock: | $(STAMP)
	$(UV_COMPILE) pyproject.toml --python-platform aarch64-manylinux2014 --python-version 3.13 \
		$(foreach p,$(shell $(BIN)/python -c 'from tools.check_build import RUNTIME_PROVIDED; print(*RUNTIME_PROVIDED)'),--no-emit-package $(p)) \
		-o requirements/runtime.lock
	$(UV_COMPILE) pyproject.toml --extra dev --universal --python-version 3.11 -c requirements/runtime.lock \
		-o requirements/dev.lock
	$(UV_COMPILE) --group pyproject.toml:sam --universal --python-version 3.11 -o requirements/sam.lock

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
