# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install run demo test test-fast screenshots lint bench bench-docs bench-more wrk clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,postgres]'
	touch $(STAMP)

run: install
	$(BIN)/mailjet-bridge serve

# The bridge with local Segment and Mailjet sinks and a temporary database: no account needed.
demo: install
	$(BIN)/mailjet-bridge demo

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q

# The tests that start no process, browser or database server (see `slow` in tests/conftest.py).
test-fast: lint
	PROPERTY_EXAMPLES=20 OPENAPI_EXAMPLES=10 $(BIN)/pytest -q -m 'not slow'

# Refresh the README's screenshots in docs/img/: the browser test writes them to its temporary
# folder (here one of our own), never into the repository; this target copies them over.
screenshots: install
	@command -v chromium >/dev/null || { echo "screenshots need Debian's chromium: apt-get install chromium"; exit 1; }
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		$(BIN)/pytest -q tests/test_browser.py --basetemp="$$tmp" && \
		find "$$tmp" -path '*/screenshots/*.png' -exec cp {} docs/img/ \; && \
		echo "screenshots copied to docs/img/"

# Every figure of docs/benchmarks.md's table (#11), with its plots in bench/out/ (not tracked); about
# 11-14 minutes on 2 cores. BENCH_QUICK=1 is a 1-minute smoke run; bench/run.py lists the settings.
bench: install $(BENCH_STAMP) wrk
	$(BIN)/python bench/run.py

# The same run, its plots copied over docs/img/'s (what docs/benchmarks.md shows): the harness
# writes them to a temporary folder of this target's, never into the repository, as `screenshots`.
bench-docs: install $(BENCH_STAMP) wrk
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		BENCH_PLOT_DIR="$$tmp" $(BIN)/python bench/run.py && \
		ls "$$tmp/bench-throughput.png" "$$tmp/bench-rss.png" >/dev/null && \
		cp "$$tmp/bench-throughput.png" "$$tmp/bench-rss.png" docs/img/ && \
		echo "plots copied to docs/img/"

# The older single-purpose benchmarks (accept path under gunicorn, in-process steps, the Engage
# burst, slow clients against each candidate server, what each forwarder design could reach, what
# PostgreSQL's commit-order barrier of docs/range-delivery.md would cost, what another HTTP server
# in front of the webhook could reach).
bench-more: install $(BENCH_STAMP) wrk
	$(BIN)/python bench/accept.py
	$(BIN)/python bench/components.py
	$(BIN)/python bench/identify_burst.py
	$(BIN)/python bench/slow_clients.py
	$(BIN)/python bench/r3_ceiling.py
	$(BIN)/python bench/pg_barrier.py
	$(BIN)/python bench/front_ceiling.py

$(BENCH_STAMP): setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,postgres,bench]'
	touch $(BENCH_STAMP)

wrk:
	@command -v wrk >/dev/null || { echo "installing wrk (apt-get install -y wrk)"; \
		apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }; } \
		|| { echo "make bench needs wrk and could not install it: run 'apt-get install wrk' as root"; exit 1; }

clean:
	rm -rf $(VENV) var build *.egg-info
