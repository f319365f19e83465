# Everything runs from a virtual environment this Makefile creates and fills itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Real agent CLIs for the end-to-end tests, driven offline against fake model servers
# (tests/fake_responses_api.py for Codex, tests/fake_messages_api.py for Claude Code).
CODEX_VERSION := 0.169.0
CODEX_DIR := $(VENV)/codex
CODEX_STAMP := $(CODEX_DIR)/.installed-$(CODEX_VERSION)
CLAUDE_VERSION := 2.1.332
CLAUDE_DIR := $(VENV)/claude
CLAUDE_STAMP := $(CLAUDE_DIR)/.installed-$(CLAUDE_VERSION)

.PHONY: install demo test lint bench clean codex claude

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ralph.cli.demo

# Without npm, or if the install fails, the codex test is skipped and says why.
$(CODEX_STAMP):
	@if command -v npm >/dev/null 2>&1; then \
		npm install --prefix $(CODEX_DIR) --no-audit --no-fund --loglevel=error \
			@openai/codex@$(CODEX_VERSION) && touch $@ \
		|| echo "warning: npm could not install @openai/codex; the codex test will be skipped"; \
	else \
		echo "warning: npm not found; the codex end-to-end test will be skipped"; \
	fi

codex: $(CODEX_STAMP)

# The npm package carries the native binary for this platform as an optional dependency.
$(CLAUDE_STAMP):
	@if command -v npm >/dev/null 2>&1; then \
		npm install --prefix $(CLAUDE_DIR) --no-audit --no-fund --loglevel=error \
			@anthropic-ai/claude-code@$(CLAUDE_VERSION) && touch $@ \
		|| echo "warning: npm could not install @anthropic-ai/claude-code; the claude test will be skipped"; \
	else \
		echo "warning: npm not found; the claude end-to-end test will be skipped"; \
	fi

claude: $(CLAUDE_STAMP)

test: $(STAMP) $(CODEX_STAMP) $(CLAUDE_STAMP)
	CODEX_BIN=$(CURDIR)/$(CODEX_DIR)/node_modules/.bin/codex \
	CLAUDE_BIN=$(CURDIR)/$(CLAUDE_DIR)/node_modules/.bin/claude \
	$(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check ralph tests
	$(BIN)/ruff format --check ralph tests
	$(BIN)/mypy
	$(BIN)/lint-imports

# Figures, not pass/fail: a few minutes; `make bench BENCH_ARGS=--full` for docs/performance.md.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
