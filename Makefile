# The two commands a new user runs: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs (torch first: the CPU build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mmdialog demo --out runs/demo

test: $(STAMP) browser
	$(BIN)/python -m pytest

# The web page test drives a headless Chromium. Install Debian's chromium where we can (root with apt-get);
# elsewhere that one test is skipped and says why.
browser:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    echo "installing chromium for the web page test (apt-get)" && \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1; } || \
	  echo "chromium could not be installed: the web page test will be skipped"

clean:
	rm -rf runs .pytest_cache
