# Every target bootstraps the virtualenv it needs; `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test unit lint build-check bench chaos fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tiktok-bridge demo

# SAM CLI offline: a region, no telemetry, no credentials needed.
SAM := SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1 $(BIN)/sam

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy layers/bridge functions tests tools
	$(BIN)/cfn-lint template.yaml
	$(SAM) validate --lint --region us-east-1
	$(BIN)/python tools/lint_template.py template.yaml

# `sam build` without Docker or Python 3.13 (makefile builds, arm64 cp313 wheels), then check the artifact.
build-check: $(STAMP)
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

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
