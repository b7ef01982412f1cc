# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,postgres]'
	touch $(STAMP)

run: install
	$(BIN)/mailjet-bridge serve

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/accept.py
	$(BIN)/python bench/components.py
	$(BIN)/python bench/identify_burst.py

clean:
	rm -rf $(VENV) var build *.egg-info
