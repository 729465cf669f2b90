# A newcomer needs two commands: `make run` and `make test`. Each installs what it needs.
VENV ?= .venv
PYTHON ?= $(shell sh tools/find-python)
BIN := $(CURDIR)/$(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The Procfile's web command, so `make run` starts the server exactly as Cloud Foundry does.
WEB_COMMAND := $(shell sed -n 's/^web: *//p' Procfile)

.PHONY: run test test-fast lint format vendor screenshot bench bench-profile tools clean

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --find-links vendor -r requirements.txt
	touch $@

# The test tools, and the package itself (editable), so tests import it as users would.
$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt pyproject.toml
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e . --config-settings editable_mode=compat
	touch $@

# Plain-text logs for a terminal, unless LOG_FORMAT says otherwise; Cloud Foundry gets JSON.
run: $(VENV)/.runtime
	LOG_FORMAT="$${LOG_FORMAT:-text}" PATH="$(BIN):$$PATH" bash -c '$(WEB_COMMAND)'

# Debian tools the wire tests drive, installed only when missing: ab; nginx as a stand-in
# router and proxy; chromium for the page test (driven by Playwright, never its own browser
# download); openssl for the probe's https test; postgresql for the exports' real database
# (tests/pg_support.py runs its own throwaway cluster; the one Debian may create and start on
# port 5432 is never used).
APT_TOOLS := $(shell command -v ab >/dev/null || echo apache2-utils) \
	$(shell PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null || echo nginx-light) \
	$(shell [ -x /usr/bin/chromium ] || echo chromium) \
	$(shell command -v openssl >/dev/null || echo openssl) \
	$(shell ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || echo postgresql)
tools:
	@[ -z "$(strip $(APT_TOOLS))" ] || { $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq $(APT_TOOLS); }

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# pytest exits 5 when it collected no tests: a suite that ran nothing has not passed.
test: lint tools
	$(BIN)/python -m pytest; status=$$?; \
	  [ $$status -ne 5 ] || echo "pytest collected no tests: failing on purpose" >&2; \
	  exit $$status

# The same without the tests marked slow, for a quick local loop.
test-fast: lint tools
	$(BIN)/python -m pytest -m 'not slow'

vendor:
	tools/vendor

# Benchmarks beside a minimal Flask app and nginx; not part of `make test`. Installs wrk, ab,
# nginx (apt) and bench/requirements.txt (into the venv) when missing. About 8 minutes;
# BENCH_ARGS=--quick for a 1-2 minute smoke run, or --rounds N, or --env KEY=VALUE.
bench: $(VENV)/.runtime
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Where the per-chunk time goes: py-spy and strace -c, project vs minimal app (bench/PROFILE.md).
bench-profile: $(VENV)/.runtime
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/profile_chunks.py

# Refresh docs/page.png, the README's picture of the page, from the browser test.
screenshot: $(VENV)/.dev tools
	UPDATE_SCREENSHOT=1 $(BIN)/python -m pytest -q tests/test_page.py -k direct_sse_stream

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
