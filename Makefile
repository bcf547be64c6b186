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

# The oldest Airflow we support, tested by `make test-min` (CI runs it after `make test`).
MIN_AIRFLOW := 3.2.0
MIN_VENV := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed
# Airflow 3.2.0's API server breaks with newer fastapi/cadwyn releases than it was built with.
MIN_CONSTRAINTS := "fastapi>=0.129,<0.141" "cadwyn<8" "starlette<1"

.PHONY: install lint typecheck unit test test-min demo bench clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --python "$$(command -v $(PYTHON))"
	touch $(STAMP)

install: $(STAMP)

$(MIN_STAMP): $(UV) pyproject.toml uv.lock
	$(UV) venv --quiet --allow-existing --python "$$(command -v $(PYTHON))" $(MIN_VENV)
	$(UV) export --frozen --only-group dev --no-hashes --no-emit-project --quiet -o $(MIN_VENV)/dev-requirements.txt
	VIRTUAL_ENV=$(MIN_VENV) $(UV) pip install --quiet -e ".[emulator]" "apache-airflow==$(MIN_AIRFLOW)" \
		-r $(MIN_VENV)/dev-requirements.txt $(MIN_CONSTRAINTS)
	touch $(MIN_STAMP)

lint: install
	$(RUN) ruff check airflow_provider_imagegen dags tests bench demo

typecheck: install
	$(RUN) mypy

unit: install
	$(RUN) pytest $(PYTEST_ARGS)

test: lint typecheck unit

# The same tests against the oldest supported Airflow (not locked: resolved against MIN_AIRFLOW).
test-min: $(MIN_STAMP)
	$(MIN_VENV)/bin/python -c "import airflow; assert airflow.__version__ == '$(MIN_AIRFLOW)', airflow.__version__"
	$(MIN_VENV)/bin/python -m pytest $(PYTEST_ARGS)

demo: install
	$(RUN) python -m demo

bench: install
	$(RUN) python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(MIN_VENV) $(TOOLS) demo-output .airflow-demo bench/results
