# The two commands a newcomer needs: `make demo` and `make test`. Each does its own set-up first
# (setup/setup.sh: Debian packages, control plane binaries, virtualenv), doing only what is missing.
PY := .venv/bin/python
SETUP := bash setup/setup.sh
SOURCES := l3lb tests bench demo nixos

.PHONY: demo test lint unit bench

# The whole path on one machine, narrated (root): control plane, 3 nodes with FRR and l3lb, router, client.
demo:
	@$(SETUP) demo
	@$(PY) demo/demo.py

# The whole suite (root): lint, unit and property tests, then the real control plane, network namespaces,
# FRR and the Nix evaluations. L3LB_REQUIRE_ALL=1: a test that cannot run here is an error, not a skip.
test:
	@$(SETUP) test
	$(PY) -m ruff check $(SOURCES)
	$(PY) -m ruff format --check $(SOURCES)
	L3LB_REQUIRE_ALL=1 $(PY) -m pytest -q -p no:cacheprovider

lint:
	@$(SETUP) unit
	$(PY) -m ruff check $(SOURCES)
	$(PY) -m ruff format --check $(SOURCES)

# Only what needs neither root nor the control plane.
unit:
	@$(SETUP) unit
	$(PY) -m pytest -q -p no:cacheprovider -m "not cluster and not root"

# Benchmarks (root): the agent at scale (a sweep of cluster sizes, quiet and under churn), the allocator,
# the leader's Service conditions under endpoint churn, convergence through FRR (a pod's readiness, a change
# of weights, a drain), l3lb next to a direct BGP speaker at the same router (hop by hop), and a 10-minute
# chaos soak. Results in bench/results/.
bench:
	@$(SETUP) bench
	$(PY) bench/agent.py --sweep
	$(PY) bench/allocation.py
	$(PY) bench/conditions.py
	$(PY) bench/convergence.py
	$(PY) bench/weights.py
	$(PY) bench/drain.py
	$(PY) bench/peers.py
	$(PY) bench/soak.py --minutes 10
