# The two commands a newcomer needs: `make demo` and `make test`.
PY ?= .venv/bin/python

.PHONY: demo test lint unit bench control-plane venv

venv: $(PY)
$(PY):
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'

control-plane:
	bash tests/build-control-plane.sh

lint: $(PY)
	$(PY) -m ruff check l3lb tests bench demo nixos
	$(PY) -m ruff format --check l3lb tests bench demo nixos

# The whole suite: unit and property tests, then the real control plane and network namespaces (as root).
test: $(PY) lint control-plane
	$(PY) -m pytest -q -p no:cacheprovider

# Only what needs neither root nor the control plane.
unit: $(PY)
	$(PY) -m pytest -q -p no:cacheprovider -m "not cluster and not root"

# The whole path on one machine, narrated (root): control plane, 3 nodes with FRR and l3lb, router, client.
demo: $(PY)
	$(PY) demo/demo.py

# Benchmarks (root): the agent at scale, the allocator, convergence through FRR. Results in bench/results/.
bench: $(PY) control-plane
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) bench/agent.py
	$(PY) bench/allocation.py
	$(PY) bench/convergence.py
