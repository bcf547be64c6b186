# Two commands matter: `make demo` and `make test`. Each creates the environment if missing; `make test`
# also installs the few Debian packages its tests use (`make system-deps`: chromium, fonts, redis-server).
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
# Google Cloud Composer and Astro Runtime ship Airflow 3.1 builds; 3.1.2 is the floor in pyproject.toml.
MIN_AIRFLOW := 3.1.2
MIN_VENV := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed
# Airflow 3.1.2 pins fastapi<0.118 itself; its API server also breaks with cadwyn 8 and starlette 1,
# and its token issuer with PyJWT 2.11+ ("Issuer (iss) must be a string"): Airflow's own constraints
# for 3.1.2 have PyJWT 2.10 (and flask-jwt-extended 4.7.1, which works with it), as managed deployments do.
MIN_CONSTRAINTS := "cadwyn<8" "starlette<1" "pyjwt<2.11" "flask-jwt-extended<4.7.2"

# `make test-lowest`: the built wheel with every direct dependency at its floor (uv's lowest-direct
# resolution, with the same constraints), in a venv made afresh each time, running tests/release.
LOWEST_VENV := $(TOOLS)/venv-lowest

LINT_PATHS := airflow_provider_imagegen dags tests bench demo docs

.PHONY: install system-deps lint typecheck unit docs docs-screenshots test test-min test-lowest demo bench clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --python "$$(command -v $(PYTHON))"
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium + fonts (tests/ui) and redis-server (tests/deployment), apt-get'ed only if missing.
system-deps:
	@bash .ci/install-system-deps

$(MIN_STAMP): $(UV) pyproject.toml uv.lock
	$(UV) venv --quiet --allow-existing --python "$$(command -v $(PYTHON))" $(MIN_VENV)
	# the dev group as locked, but for the celery and fab providers: their locked versions need the
	# newest Airflow's dependencies, so they are resolved afresh beside the oldest Airflow.
	$(UV) export --frozen --only-group dev --no-hashes --no-emit-project --quiet \
		--prune apache-airflow-providers-celery --prune celery --prune apache-airflow-providers-fab \
		-o $(MIN_VENV)/dev-requirements.txt
	VIRTUAL_ENV=$(MIN_VENV) $(UV) pip install --quiet -e ".[emulator]" "apache-airflow==$(MIN_AIRFLOW)" \
		apache-airflow-providers-fab apache-airflow-providers-celery "celery<5.7" \
		-r $(MIN_VENV)/dev-requirements.txt $(MIN_CONSTRAINTS)
	touch $(MIN_STAMP)

lint: install
	$(RUN) ruff check $(LINT_PATHS)
	$(RUN) ruff format --check $(LINT_PATHS)
	$(RUN) ruff check --select AIR --preview dags

typecheck: install
	$(RUN) mypy

unit: install
	$(RUN) pytest $(PYTEST_ARGS)

# The Sphinx site in docs/_build/html: from scratch each time (-E), warnings are errors, nitpicky references.
docs: install
	$(RUN) sphinx-build -E -W --keep-going -n -q -b html docs docs/_build/html

# Re-take docs/_static/screenshots/*.png with the browser tests and the demo (docs/screenshots.py).
docs-screenshots: system-deps install
	$(RUN) python docs/screenshots.py

test: system-deps lint typecheck docs unit

# The same tests against the oldest supported Airflow (not locked: resolved against MIN_AIRFLOW).
# `install` too: the release tests take twine from .venv (twine 7 cannot live beside Airflow 3.1.2).
test-min: system-deps install $(MIN_STAMP)
	$(MIN_VENV)/bin/python -c "import airflow; assert airflow.__version__ == '$(MIN_AIRFLOW)', airflow.__version__"
	$(MIN_VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The wheel, not the source tree: bin/pytest (unlike `python -m pytest`) keeps the checkout off sys.path.
test-lowest: $(UV)
	rm -rf $(LOWEST_VENV)
	@date +%s > $(TOOLS)/.lowest-started
	$(UV) venv --quiet --python "$$(command -v $(PYTHON))" $(LOWEST_VENV)
	printf '%s\n' $(MIN_CONSTRAINTS) > $(LOWEST_VENV)/constraints.txt
	$(UV) pip compile --quiet --resolution lowest-direct --python $(LOWEST_VENV)/bin/python \
		--extra emulator --extra testing -c $(LOWEST_VENV)/constraints.txt pyproject.toml -o $(LOWEST_VENV)/requirements.txt
	$(UV) build --wheel --quiet --out-dir $(LOWEST_VENV)/dist
	VIRTUAL_ENV=$(LOWEST_VENV) $(UV) pip install --quiet -r $(LOWEST_VENV)/requirements.txt "pytest>=8" "pytest-timeout>=2.3"
	VIRTUAL_ENV=$(LOWEST_VENV) $(UV) pip install --quiet --no-deps $(LOWEST_VENV)/dist/*.whl
	$(LOWEST_VENV)/bin/python tests/release/lowest_versions.py
	$(LOWEST_VENV)/bin/pytest tests/release/test_smoke.py -q -p no:cacheprovider --disable-warnings $(PYTEST_ARGS)
	@echo "test-lowest: passed in $$(( $$(date +%s) - $$(cat $(TOOLS)/.lowest-started) )) s"

demo: install
	$(RUN) python -m demo

bench: install
	$(RUN) python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(MIN_VENV) $(TOOLS) demo-output .airflow-demo bench/results docs/_build
