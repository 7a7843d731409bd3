# The two commands of the README: `make up` (install + start the lakehouse) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test install bench clean browser bytecode

# The project's own bytecode, written explicitly: where PYTHONDONTWRITEBYTECODE is set (as in some CI images)
# every process would otherwise recompile the project on import, ~0.3 s per CLI call, Dagster run and worker.
# Python skips a .pyc whose source changed since, so a stale one costs nothing but that recompile.
PROJECT_CODE := lakehouse assets sensors resources cli serving definitions.py bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(MAKE) --no-print-directory browser
	touch $(STAMP)

# Headless Chromium for the coverage page's browser test: Debian's packages, installed when running as root
# (CI) and missing; never a downloaded browser. Without it those tests are skipped and say why.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian chromium + chromium-driver for the browser tests"; \
			apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
		else echo "note: /usr/bin/chromium missing; browser tests will be skipped (apt-get install chromium chromium-driver)"; fi; \
	fi

install: $(STAMP)

bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q -j 0 $(PROJECT_CODE) >/dev/null

up: bytecode
	$(BIN)/lakehouse dev

test: bytecode
	$(BIN)/pytest

bench: bytecode
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .dagster_home data
