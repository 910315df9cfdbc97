# Two entry points (see README.md):
#   make artifacts  -- create .venv if missing, release every model (every target, verified, benchmarked) into artifacts/
#   make test       -- create .venv if missing, run the test suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# the stamp names this checkout, so a venv copied from another checkout re-installs graphopt from here
STAMP := $(VENV)/.graphopt-installed-$(shell echo '$(CURDIR)' | cksum | cut -d' ' -f1)

.PHONY: venv artifacts test bench clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps open-rppg==0.1.1
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.graphopt-installed*
	touch $(STAMP)

MODELS := facephys physnet

artifacts: venv
	set -e; version=$$($(PY) -c "import graphopt; print(graphopt.__version__)"); \
	for m in $(MODELS); do $(VENV)/bin/graphopt release --model $$m --out artifacts/$$m-$$version --force; done

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file per worker at a time so that
# each module's fixtures are built once; BLAS gets one thread per worker, as the runtimes do.
TEST_WORKERS ?= 2

test: venv
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) build *.egg-info
