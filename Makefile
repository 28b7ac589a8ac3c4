# The two commands of the README: `make run` and `make test`. Both set everything up first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.chareval-installed
PYTEST_ARGS ?=

.PHONY: setup run test judge-check mlflow-ui clean

# Re-install only when the dependency list changes. llama-cpp-python builds from
# source (about 4 minutes on 2 cores) the first time; pip caches the wheel after that.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,finetune-local]'
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) src/run.py

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# How well does the configured judge agree with the hand-labelled set? (ARGS="models=seed" etc.)
judge-check: setup
	$(PY) src/run.py stage=judge_check $(ARGS)

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --default-artifact-root $(CURDIR)/mlruns/artifacts

clean:
	rm -rf outputs mlruns
