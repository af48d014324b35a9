# Two commands for a new user: `make demo` and `make test`. Each sets up what it needs.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test test-fast lab bench soak chromium clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)  ## four sessions run a one-second cell at once
	$(BIN)/python examples/demo.py

chromium:  ## Debian's Chromium for the browser tests (installed as root when missing)
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# Enterprise Gateway 3.3 pins jupyter_server<2 and jupyter_client<7: it gets a venv of its own,
# which tests/gatewaykit.py finds here (pip would quietly give the shared .venv EG 2.5 instead).
EG_VENV := .venv-eg
$(EG_VENV)/.installed:
	test -x $(EG_VENV)/bin/python || $(PY) -m venv $(EG_VENV)
	echo '*' > $(EG_VENV)/.gitignore
	$(EG_VENV)/bin/pip install -q -U pip
	$(EG_VENV)/bin/pip install -q "jupyter_enterprise_gateway==3.3.0"
	touch $@

test: $(STAMP) chromium $(EG_VENV)/.installed  ## the whole suite: lint, real kernels, real JupyterLab, real Chromium
	$(BIN)/ruff check jupyter_sessionpool tests bench examples
	$(BIN)/python -m pytest

test-fast: $(STAMP) $(EG_VENV)/.installed  ## everything but the browser tests
	$(BIN)/python -m pytest -m "not browser"

lab: $(STAMP)  ## JupyterLab on examples/ with the extension, for a person to try
	$(BIN)/jupyter lab --ip=127.0.0.1 --ServerApp.root_dir=examples $(if $(filter 0,$(shell id -u)),--allow-root)

# The peers (ipyparallel's lab extension among them) go into a venv of their own, so they
# never disturb the shared .venv and its browser tests; pinned to .venv's versions.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml $(STAMP)
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	echo '*' > $(BENCH_VENV)/.gitignore
	$(BIN)/pip freeze --exclude-editable > $(BENCH_VENV)/constraints.txt
	$(BENCH_VENV)/bin/pip install -q -U pip
	SKIP_JUPYTER_BUILDER=1 $(BENCH_VENV)/bin/pip install -q -c $(BENCH_VENV)/constraints.txt -e ".[bench]"
	touch $@

bench: $(BENCH_VENV)/.installed  ## the pool against raw jupyter_client and its peers (~10 min); writes docs/benchmarks.md
	$(BENCH_VENV)/bin/python bench/run.py

soak: $(STAMP)  ## the long fault runs (~10 min): 50 kill rounds, 2 min of load, 1,000 sessions of churn; figures into docs/reliability.md
	JSP_KILL_ROUNDS=50 $(BIN)/python -m pytest tests/test_faults.py -k kill_rounds -p no:cacheprovider -q -s
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) $(EG_VENV) build dist *.egg-info
