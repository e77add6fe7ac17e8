# diffraw-jax: `make install`, `make test`, `make demo`.
# Everything installs into .venv from this repository's setup.py.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test test-fast demo clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[all]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	@echo "make demo (train, sample, evaluate on synthetic ZRR data) arrives with the training issue (#5)." >&2
	@exit 2

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
