# Two commands matter: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test bench soak check clean valkey screenshot

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/tickvault run $(ARGS)

# two workers: most tests wait on sockets and servers; each worker has its own Valkey and ports
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py $(ARGS)

# 24 h of simulated market through the running system while faults fire (RELIABILITY.md)
soak: $(STAMP)
	$(BIN)/python bench/soak.py $(ARGS)

check: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src

# the README's picture of the web dashboard (docs/dashboard.png), from a short simulated run in
# headless Chromium (Debian's `chromium` package), so it stays true
screenshot: $(STAMP)
	$(BIN)/python docs/screenshot.py $(ARGS)

valkey: $(STAMP)
	$(BIN)/tickvault valkey $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
