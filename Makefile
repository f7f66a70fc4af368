# The two set-up commands of the README live here: `make demo` and `make test`.
# Each creates .venv with python3 (>= 3.11) and installs gastown into it first,
# so a fresh machine needs nothing but python3, git and make.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit install clean bench chaos agent-clis

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "gastown needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## demo: the main job (see README)
# AGENT=claude or AGENT=codex: the same demo with the real CLI against a scripted model
AGENT ?=
demo: $(STAMP)
ifeq ($(AGENT),)
	$(BIN)/python -m demo
else
	$(MAKE) agent-clis
	$(BIN)/python -m tests.scripted_model.demo $(AGENT)
endif

## test: lint, type-check and the whole test suite
test: $(STAMP) lint typecheck agent-clis
	# Three workers: the e2e tests mostly wait on real processes, so the suite takes about
	# two thirds of its serial time on 2 cores (measured: 8.5 min instead of 12-14).
	$(BIN)/python -m pytest -q -n 3 tests

## agent-clis: the pinned real agent CLIs the agent_cli tests drive (npm, cached outside
## the repo); without npm only a warning, except under CI where the tests must run
agent-clis: $(STAMP)
	@if command -v npm >/dev/null 2>&1; then \
		$(BIN)/python -m tests.scripted_model.clis install; \
	elif [ "$${CI:-}" = true ]; then \
		echo "error: npm is missing; CI must run the agent CLI tests" >&2; exit 1; \
	else \
		echo "warning: npm is missing; the agent CLI tests will be skipped" >&2; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .

# mypy cannot follow setuptools' editable import hook, so it reads the sources through
# a link tree that has the installed shape (gastown.supervisor -> supervisor/, ...).
typecheck: $(STAMP)
	rm -rf build/typecheck && mkdir -p build/typecheck/gastown
	ln -s ../../../supervisor build/typecheck/gastown/supervisor
	ln -s ../../../roles build/typecheck/gastown/roles
	ln -s ../../../config build/typecheck/gastown/config
	cd build/typecheck && MYPYPATH=. ../../$(BIN)/mypy --config-file ../../pyproject.toml -p gastown.supervisor -p gastown.roles -p gastown.config
	MYPYPATH=build/typecheck $(BIN)/mypy tests bench demo

bench: $(STAMP)
	$(BIN)/python -m bench.run

## chaos: the long run of the chaos test (tests/chaos/README.md), e.g. make chaos RUNS=200 SEED=1
RUNS ?= 20
SEED ?= 1
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --runs $(RUNS) --seed $(SEED)

clean:
	rm -rf $(VENV) build *.egg-info
