# Every target sets itself up: system packages (scripts/install-system-deps.sh), .venv, package.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint bench stress clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev,fast]'
	touch $@

## make run: a tunnel on loopback with a demo HTTP service; Ctrl-C stops it.
run: setup
	$(PY) -m muxtunnel.demo

## make test: the default test run (slow tests excluded).
test: setup
	$(PY) -m pytest -q

## make lint: ruff and mypy --strict, as CI runs them before the tests.
lint: setup
	$(VENV)/bin/ruff check mux muxtunnel tests bench
	$(VENV)/bin/mypy --strict mux muxtunnel

## make bench: iperf3 runs against real peers, report under bench/results/.
bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench

## make stress: the slow tests plus every attack, fault and impaired-link test, then a table of
## their figures (peak RSS, fds, CPU s, honest-session latency). FIGURES=file.json keeps them.
stress: setup
	MUXTUNNEL_FIGURES=$(FIGURES) $(PY) -m pytest -q -p no:cacheprovider -m "slow or stress"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
