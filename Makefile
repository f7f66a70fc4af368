# The two set-up commands of the README live here: `make demo` and `make test`.
# Each creates .venv with python3 (>= 3.11) and installs gastown into it first,
# so a fresh machine needs nothing but python3, git and make.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-durations lint typecheck unit install clean bench chaos agent-clis

# The source folders in the installed shape: build/src/gastown/{supervisor,roles,config}
# are links to the top-level folders. The development install imports through it, and so
# does mypy (which cannot follow setuptools' editable import hook).
LINKS := build/src/gastown

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "gastown needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -rf $(LINKS) && mkdir -p $(LINKS)
	ln -s ../../../supervisor $(LINKS)/supervisor
	ln -s ../../../roles $(LINKS)/roles
	ln -s ../../../config $(LINKS)/config
	# setuptools' editable hook (a meta-path finder installed by a .pth file) costs every
	# Python process ~10 ms of start-up, half of `python -c pass`: with a CLI call or a
	# role start per step the test suite starts thousands. The same .pth file naming the
	# link tree instead makes the sources importable through the plain path finder.
	$(BIN)/python -c 'import pathlib, sysconfig; site = pathlib.Path(sysconfig.get_paths()["purelib"]); \
		[p.write_text(str(pathlib.Path("build/src").resolve()) + "\n") for p in site.glob("__editable__.gastown-*.pth")]'
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
test: $(STAMP) lint agent-clis
	# The type-check runs beside the tests: one core for a few seconds while the workers
	# start, instead of as many seconds before them. Its report follows the tests', and
	# either failing fails the target.
	#
	# Four workers on 2 cores, each taking the next tests when it is short of them, longest
	# first (tests/schedule.py: the long e2e tests overlap with the rest instead of ending
	# the run alone). One of them is the waiting lane: it takes the tests that mostly wait
	# (on timers, paused processes, sleeping gates) one after the other, the other three
	# take the rest; the suite is otherwise bound by CPU. Measured one after the other on
	# this machine: 172 s with the lane, 195 s with four workers and no lane, 193-203 s
	# with three (where four without a lane also left timing-sensitive tests short of CPU).
	@mkdir -p build; \
	$(MAKE) --no-print-directory typecheck >build/typecheck.log 2>&1 & typecheck=$$!; \
	$(BIN)/python -m pytest -q -n 4 --dist load --maxschedchunk 1 tests; tests=$$?; \
	wait $$typecheck; typed=$$?; echo "== typecheck"; cat build/typecheck.log; \
	[ $$tests -eq 0 ] && [ $$typed -eq 0 ]

## test-durations: run the suite and record each test's duration for the longest-first order
test-durations: $(STAMP) agent-clis
	$(BIN)/python -m pytest -q -n 4 --dist load --maxschedchunk 1 \
		--record-durations tests/durations.json tests

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

# mypy reads the sources through the link tree, which has the installed shape (its
# modules are named gastown.*): one run for the package and what uses it, half the time
# of two runs that each analysed the package.
typecheck: $(STAMP)
	MYPYPATH=build/src $(BIN)/mypy build/src/gastown tests bench demo

## bench: the benchmark suite, ~9 min (bench/README.md); BENCH_ARGS=--quick skips N = 200
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## chaos: the long run of the chaos test (tests/chaos/README.md), e.g. make chaos RUNS=200 SEED=1
RUNS ?= 20
SEED ?= 1
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --runs $(RUNS) --seed $(SEED)

clean:
	rm -rf $(VENV) build *.egg-info
