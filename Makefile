# firstspike: `make demo` sets everything up and runs the main job; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.firstspike-setup
APT_PACKAGES := iverilog dataset-fashion-mnist chromium
export PYTHONHASHSEED := 0

.PHONY: setup apt demo test bench clean help

help:
	@echo "make demo   - set up (apt packages, venv, pinned pip packages) and run the whole flow (firstspike flow):"
	@echo "              train -> model file -> Verilog -> Verilator/Icarus/gate level -> iCEBreaker bitstream ->"
	@echo "              virtual board -> runs/demo/report/report.html"
	@echo "make test   - set up the same way and run the test suite (one worker per core: TEST_JOBS=N to choose)"
	@echo "make bench  - run the benchmarks (writes bench/results/*.json and docs/benchmarks.md)"

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing apt packages:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  else \
	    echo "warning: missing apt packages:$$missing (run as root: apt-get install$$missing)"; \
	  fi; \
	fi

$(STAMP): requirements.txt pyproject.toml
	$(MAKE) apt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: apt $(STAMP)

# the demo's training budget: 5 epochs + 1 output-refit epoch (95.90% on MNIST; `firstspike flow`
# alone trains csnn_ice40's full 30 + 3, 97.62%); the float rung trains beside it (--jobs 2)
DEMO_FLAGS ?= --epochs 5 --refit-epochs 1

demo: setup
	$(PY) -m firstspike flow --out runs/demo $(DEMO_FLAGS)

# the suite runs on one pytest-xdist worker per core (at most 8), a test file per worker at a
# time, the costliest first (tests/conftest.py): `make test TEST_JOBS=0` runs it here, serially
TEST_JOBS ?= auto

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --durations=20 -n $(TEST_JOBS) --maxprocesses 8 --dist loadfile --no-loadscope-reorder tests

bench: setup
	$(PY) bench/train_speed.py
	$(PY) bench/accuracy.py
	$(PY) bench/accuracy_vs_T.py
	$(PY) bench/exactness.py
	$(PY) bench/fixed_point.py
	$(PY) bench/rtl_regression.py
	$(PY) bench/rtl_lanes.py
	$(PY) bench/gate_level.py --model bench/results/ice40_binary.pt --images 300
	$(PY) bench/gate_level.py --model bench/results/mnist_binary.pt --images 12
	$(PY) bench/boards.py
	$(PY) bench/demo_time.py

clean:
	rm -rf runs build .pytest_cache
