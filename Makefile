# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast screenshots lint bench clean

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

# The tests that start no process, browser or database server (see `slow` in tests/conftest.py).
test-fast: lint
	PROPERTY_EXAMPLES=20 OPENAPI_EXAMPLES=10 $(BIN)/pytest -q -m 'not slow'

# Refresh the README's screenshots in docs/img/ (the suite itself writes them to a temporary folder).
screenshots: install
	@command -v chromium >/dev/null || { echo "screenshots need Debian's chromium: apt-get install chromium"; exit 1; }
	$(BIN)/pytest -q tests/test_browser.py --screenshots-dir docs/img

bench: install
	$(BIN)/python bench/accept.py
	$(BIN)/python bench/components.py
	$(BIN)/python bench/identify_burst.py
	$(BIN)/python bench/slow_clients.py

clean:
	rm -rf $(VENV) var build *.egg-info
