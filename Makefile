# Two entry points (see README.md):
#   make artifacts  -- create .venv if missing, build FacePhys into artifacts/
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

artifacts: venv
	$(VENV)/bin/graphopt build --model facephys --target onnx --out artifacts/facephys-onnx
	$(VENV)/bin/graphopt build --model facephys --target onnx --no-fuse --out artifacts/facephys-onnx-unfused
	$(VENV)/bin/graphopt build --model facephys --target xla --out artifacts/facephys-xla
	$(VENV)/bin/graphopt build --model facephys --target tflite --out artifacts/facephys-tflite

test: venv
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
