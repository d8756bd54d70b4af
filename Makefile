# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint typecheck clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[cpu,dev]'
	# Published TensorRT type stubs for mypy, outside sys.path (--no-deps: they require the
	# real TensorRT wheels, which cannot be installed here).
	$(PIP) install --quiet --no-deps --target $(VENV)/trt-stubs tensorrt-stubs==10.13.0.35.1
	# A real tritonserver (python backend, CPU) for the serving differential test, outside
	# sys.path (--no-deps: the wheel pins numpy < 2, which the project does not use).
	$(PIP) install --quiet --no-deps --target $(VENV)/pytriton nvidia-pytriton==0.7.0
	# KServe's SDK for the serving conformance tests, with its own dependencies, outside sys.path:
	# its pins (fastapi, pydantic, kubernetes, uvloop for uvicorn) and its own build of the
	# inference.* protobuf messages must not enter the project's environment; the tests run it in
	# a child process with PYTHONPATH=.venv/kserve.
	$(PIP) install --quiet -c constraints.txt --target $(VENV)/kserve kserve==0.21.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/m2pt-demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest --durations=15

bench: $(STAMP)
	$(BIN)/m2pt-bench --out bench-out

lint: $(STAMP)
	$(BIN)/ruff check m2pt_deploy tests scripts

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-out bench-out .pytest_cache .mypy_cache .hypothesis
