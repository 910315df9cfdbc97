# Two entry points (see README.md):
#   make artifacts  -- create .venv if missing, build FacePhys into artifacts/
#   make test       -- create .venv if missing, run the test suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.graphopt-installed

.PHONY: venv artifacts test bench clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps open-rppg==0.1.1
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

artifacts: venv
	$(VENV)/bin/graphopt build --model facephys --target onnx --out artifacts/facephys-onnx
	$(VENV)/bin/graphopt build --model facephys --target onnx --no-fuse --out artifacts/facephys-onnx-unfused

test: venv
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
