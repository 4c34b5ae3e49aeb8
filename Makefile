# Every target bootstraps the virtualenv it needs; `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test unit lint build-check bench clean

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

unit: $(STAMP)
	$(BIN)/pytest

test: lint unit build-check

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
