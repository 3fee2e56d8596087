# Everything a fresh machine needs: `make run` (the main job) and `make test` (the test suite).
# Both create .venv with Python 3.11+ and install the package with all extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU-only torch wheel; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: run test test-fast test-flower simulate bench bench-quick typecheck clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[all]" "$(TORCH_PIN)"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fedlm run --out runs/latest --report runs/latest/report.json

simulate: $(STAMP)
	$(BIN)/secagg simulate --protocol secagg+ --clients 50 --dim 100000 --dropout 0.2 --json

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests -m "not flower"

test-flower: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -s tests/adapters -m flower

# The full run (several minutes): every table, ratio and plot README's Benchmarks section quotes, then the
# secure-aggregation overhead per Flower round (plain FedAvg vs ours vs Flower's SecAgg+, ~3 min).
bench: $(STAMP)
	mkdir -p benchmarks/results
	OMP_NUM_THREADS=1 $(BIN)/secagg bench --json benchmarks/results/bench.json --plots benchmarks/results \
		--text benchmarks/results/bench.txt
	$(BIN)/python -m benchmarks.packing
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.flower_overhead --json benchmarks/results/flower_overhead.json \
		--text benchmarks/results/flower_overhead.txt

# A small version of every section (seconds); CI runs it to keep the benchmark working. No timing is checked.
bench-quick: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/secagg bench --quick --json "$$(mktemp -t secagg-bench-XXXXXX.json)"

typecheck: $(STAMP)
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .hypothesis
