# The two commands of the README: `make run` and `make test`. Both set everything up first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.chareval-installed
PYTEST_ARGS ?=

.PHONY: setup browser run test test-fast lint format judge-check mlflow-ui dashboard clean

# Re-install only when the dependency list changes. llama-cpp-python builds from
# source (about 4 minutes on 2 cores) the first time; pip caches the wheel after that.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,finetune-local,ray]'
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) src/run.py

# The dashboard's end-to-end test drives a real headless Chromium. Debian's packages need root;
# elsewhere the test is skipped and says why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium + chromium-driver (apt-get) for the dashboard's browser test"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
		|| echo "could not install chromium: the dashboard's browser test will be skipped"; \
	else echo "chromium/chromedriver missing and no root to install them: the dashboard's browser test will be skipped"; fi

# Every test, after the lint, type and layer checks (configured in pyproject.toml), on every core
# (pytest-xdist): a module's tests on one worker, each worker on cores of its own, the slow modules
# first (tests/conftest.py; docs/benchmarks.md has the figures). PYTEST_ARGS="-n 0" runs one at a time.
test: setup browser lint
	$(PY) -m pytest -n auto $(PYTEST_ARGS)

# The inner loop: no embedded model, no LoRA, no browser, no subprocess (the `mock` provider and
# fake HTTP APIs instead), on every core; under three minutes on 2 cores. `make test` still runs
# everything.
test-fast: setup
	$(PY) -m pytest -m "not slow" -n auto -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	PYTHONPATH=. $(VENV)/bin/lint-imports

# Fix what the formatter and the linter can fix by themselves.
format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# How well does the configured judge agree with the hand-labelled set? (ARGS="models=seed" etc.)
judge-check: setup
	$(PY) src/run.py stage=judge_check $(ARGS)

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --default-artifact-root $(CURDIR)/mlruns/artifacts

# Transcripts, verdicts and comparisons in the browser (ARGS="tracking.uri=http://..." etc.).
dashboard: setup
	$(VENV)/bin/streamlit run dashboard/app.py $(if $(ARGS),-- $(ARGS))

clean:
	rm -rf outputs mlruns
