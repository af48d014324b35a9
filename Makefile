# Two commands for a new user: `make demo` and `make test`. Each sets up what it needs.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# A heading before each setup step, so that a long one is never silent: $(say) "what happens"
say     := @printf '\n==> %s\n'

.PHONY: demo test test-fast lab bench soak chromium clean

DEMO_STAMP := $(VENV)/.installed-demo

# The venv itself, with a pip recent enough for editable installs of a pyproject package.
$(BIN)/python:
	$(say) "Creating $(VENV) with $(PY)"
	$(PY) -m venv $(VENV)
	$(say) "Updating pip in $(VENV)"
	$(BIN)/pip install -U pip

# What the demo needs and nothing more: the package and its dependencies (no test tools, no
# JupyterLab, and no build of the lab extension, which the demo does not use: no Node either).
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(say) "Installing jupyter_sessionpool and its dependencies into $(VENV) (about 45 packages, a minute)"
	SKIP_JUPYTER_BUILDER=1 $(BIN)/pip install -e .
	touch $(DEMO_STAMP)

# Everything the suite needs; it includes what the demo needs, so the demo's stamp is set too.
$(STAMP): pyproject.toml | $(BIN)/python
	$(say) "Installing jupyter_sessionpool with its test tools into $(VENV) (a few minutes; building the JupyterLab extension)"
	$(BIN)/pip install -e ".[test]"
	touch $(STAMP) $(DEMO_STAMP)
	$(say) "$(VENV) is ready"

demo: $(DEMO_STAMP)  ## four sessions run a one-second cell at once
	$(say) "Running examples/demo.py: four sessions, four kernels, one-second cells at once"
	$(BIN)/python examples/demo.py

chromium:  ## Debian's Chromium for the browser tests (installed as root when missing)
	@command -v chromium >/dev/null || { printf '\n==> %s\n' "Installing Debian's Chromium for the browser tests"; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# Enterprise Gateway 3.3 pins jupyter_server<2 and jupyter_client<7: it gets a venv of its own,
# which tests/gatewaykit.py finds here (pip would quietly give the shared .venv EG 2.5 instead).
EG_VENV := .venv-eg
$(EG_VENV)/.installed:
	test -x $(EG_VENV)/bin/python || $(PY) -m venv $(EG_VENV)
	echo '*' > $(EG_VENV)/.gitignore
	$(say) "Installing Enterprise Gateway 3.3 into $(EG_VENV) for the remote tests"
	$(EG_VENV)/bin/pip install -U pip
	$(EG_VENV)/bin/pip install "jupyter_enterprise_gateway==3.3.0"
	touch $@

# The suite's pools fork their ipykernels (start_method="auto", the default on Linux); these
# files, the ones whose pools start kernels in this process, run again with spawned kernels.
SPAWN_TESTS := $(addprefix tests/,test_pool.py test_faults.py test_lifecycle.py test_cancellation.py test_worker.py \
	test_sync.py test_provisioner.py test_security.py test_bad_input.py test_logging.py test_corpus.py test_comm.py \
	test_magics.py test_widget.py)
spawn_again = $(say) "The kernel-touching tests again, with spawned kernels (start_method=spawn)"; \
	JSP_TEST_START_METHOD=spawn $(BIN)/python -m pytest -q -p no:cacheprovider $(SPAWN_TESTS)

test: $(STAMP) chromium $(EG_VENV)/.installed  ## the whole suite: lint, real kernels, gateways, packaging, real JupyterLab, real Chromium
	$(say) "Linting with ruff"
	$(BIN)/ruff check jupyter_sessionpool tests bench examples
	$(say) "Running the test suite (a few minutes)"
	$(BIN)/python -m pytest
	$(spawn_again)

test-fast: $(STAMP) $(EG_VENV)/.installed  ## everything but the browser tests and the packaging build
	$(BIN)/python -m pytest -m "not browser and not packaging"
	$(spawn_again)

lab: $(STAMP)  ## JupyterLab on examples/ with the extension, for a person to try
	$(BIN)/jupyter lab --ip=127.0.0.1 --ServerApp.root_dir=examples $(if $(filter 0,$(shell id -u)),--allow-root)

# The peers (ipyparallel's lab extension among them) go into a venv of their own, so they
# never disturb the shared .venv and its browser tests; pinned to .venv's versions.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml $(STAMP)
	@test -x $(BENCH_VENV)/bin/python || { printf '\n==> %s\n' "Creating $(BENCH_VENV) for the benchmark peers"; $(PY) -m venv $(BENCH_VENV); }
	echo '*' > $(BENCH_VENV)/.gitignore
	$(BIN)/pip freeze --exclude-editable > $(BENCH_VENV)/constraints.txt
	$(BENCH_VENV)/bin/pip install -U pip
	$(say) "Installing jupyter_sessionpool with ipyparallel and jupyter_kernel_gateway into $(BENCH_VENV)"
	SKIP_JUPYTER_BUILDER=1 $(BENCH_VENV)/bin/pip install -c $(BENCH_VENV)/constraints.txt -e ".[bench]"
	touch $@

# jupyter-mcp-server (the MCP peer of the service, with JupyterLab and jupyter-collaboration) pins
# its own stack: a venv of its own too, never .venv or .venv-bench.
PEER_VENV := .venv-mcp-peer
$(PEER_VENV)/.installed:
	@test -x $(PEER_VENV)/bin/python || { printf '\n==> %s\n' "Creating $(PEER_VENV) for jupyter-mcp-server"; $(PY) -m venv $(PEER_VENV); }
	echo '*' > $(PEER_VENV)/.gitignore
	$(PEER_VENV)/bin/pip install -U pip
	$(say) "Installing jupyter-mcp-server 2.2.4 (the MCP peer) into $(PEER_VENV)"
	$(PEER_VENV)/bin/pip install "jupyter-mcp-server==2.2.4"
	touch $@

bench: $(BENCH_VENV)/.installed $(PEER_VENV)/.installed  ## the pool against raw jupyter_client and its peers (~15 min); writes docs/benchmarks.md
	$(BENCH_VENV)/bin/python bench/run.py

soak: $(STAMP)  ## the long fault runs (~10 min): 50 kill rounds, 2 min of load, 1,000 sessions of churn; figures into docs/reliability.md
	JSP_KILL_ROUNDS=50 $(BIN)/python -m pytest tests/test_faults.py -k kill_rounds -p no:cacheprovider -q -s
	$(BIN)/python bench/soak.py

# The built extension goes too: a build finding it ships it as it is (skip-if-exists), so the
# next `python -m build` after `make clean` makes the extension afresh from labextension/src.
clean:
	rm -rf $(VENV) $(EG_VENV) build dist *.egg-info jupyter_sessionpool/labextension labextension/lib labextension/*.tsbuildinfo
