# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench gpu-check lint clean

$(BIN)/bench: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
	touch $(BIN)/bench

demo: $(BIN)/bench
	$(BIN)/bench run --attack htba --defense none --preset smoke

test: $(BIN)/bench
	$(BIN)/ruff check benchsuite attacks defenses plugins tests
	$(BIN)/lint-imports
	$(BIN)/pytest -q

# the numbers, then the one speed bound that is asserted (--benchmark-only skips it): make bench fails on it
bench: $(BIN)/bench
	$(BIN)/pytest -q tests/bench_speed.py tests/bench_filter.py --benchmark-enable --benchmark-only
	$(BIN)/pytest -q -s tests/bench_filter.py -k within_1_5x

gpu-check: $(BIN)/bench
	$(BIN)/bench doctor --gpu-check

clean:
	rm -rf $(VENV) runs .pytest_cache .benchmarks
