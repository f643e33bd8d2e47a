# `make demo` and `make test` each set up .venv first (CPU torch, no CUDA packages).
# The tests run on two pytest-xdist workers; the PostgreSQL ones share one database and so
# one worker (`xdist_group("postgres")`).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/planner optimize envs/replay/tasks/monkeys_gsm8k.yaml \
		--trials 30 --db sqlite:///demo.db

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -n 2 --dist loadgroup
