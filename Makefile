# Two entry points (see README.md):
#   make artifacts  -- create .venv if missing, release every model (verified, benchmarked) into artifacts/;
#                      a failing zoo release does not stop the others (make exits 1 naming them)
#   make test       -- create .venv if missing, run the test suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# the stamp names this checkout, so a venv copied from another checkout re-installs graphopt from here
STAMP := $(VENV)/.graphopt-installed-$(shell echo '$(CURDIR)' | cksum | cut -d' ' -f1)

.PHONY: venv artifacts test bench clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml graphopt/web/package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps open-rppg==0.1.1
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@# web targets (onnx-web, litert-web): Debian's Chromium (as root) and the npm packages pinned in graphopt/web
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	  else echo "note: /usr/bin/chromium is missing and this is not root: run 'sudo apt-get install chromium' for the web targets (their tests skip without it)"; fi; \
	fi
	@if command -v npm >/dev/null; then cd graphopt/web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error; \
	else echo "note: npm is missing: install Node.js (npm) and run 'npm ci' in graphopt/web for the web targets (their tests skip without it)"; fi
	rm -f $(VENV)/.graphopt-installed*
	touch $(STAMP)

MODELS := facephys physnet
# open-rppg's 17 models: the CPU targets and TensorRT's ONNX, a shorter clip and two benchmark rounds (heavy
# chunk models run at 2-15 FPS on some runtimes); --tier signal accepts runtimes whose own conv/matmul kernels
# round a long accumulation differently from XLA (the card marks each such artifact)
ZOO_VARIANTS := onnx,xla,tflite,tf,torch,tensorrt
ZOO_FLAGS := --variants $(ZOO_VARIANTS) --tier signal --frames 320 --rounds 2
ZOO ?= $$($(PY) -c "from graphopt import models; print(' '.join(models.zoo_names()))")

artifacts: venv
	set -e; version=$$($(PY) -c "import graphopt; print(graphopt.__version__)"); \
	for m in $(MODELS); do $(VENV)/bin/graphopt release --model $$m --out artifacts/$$m-$$version --force; done; \
	failed=""; for m in $(ZOO); do \
	  $(VENV)/bin/graphopt release --model $$m --out artifacts/$$m-$$version --force $(ZOO_FLAGS) || failed="$$failed $$m"; \
	done; \
	if [ -n "$$failed" ]; then echo "error: these releases failed (the others were written):$$failed" >&2; exit 1; fi

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file per worker at a time so that
# each module's fixtures are built once; BLAS gets one thread per worker, as the runtimes do.
TEST_WORKERS ?= 2

test: venv
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) build *.egg-info
