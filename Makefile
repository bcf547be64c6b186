# Two commands matter: `make demo` and `make test`. Each creates the environment if missing.
PYTHON ?= python3
VENV := .venv
TOOLS := .tools
UV := $(TOOLS)/bin/uv
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed
RUN := $(UV) run --frozen --no-sync
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install lint typecheck unit test demo bench clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --python "$$(command -v $(PYTHON))"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(RUN) ruff check airflow_provider_imagegen dags tests bench

typecheck: install
	$(RUN) mypy

unit: install
	$(RUN) pytest $(PYTEST_ARGS)

test: lint typecheck unit

demo: install
	$(RUN) python -m demo

bench: install
	$(RUN) python -m bench

clean:
	rm -rf $(VENV) $(TOOLS) demo-output .airflow-demo bench/results
