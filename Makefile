# Two commands: `make demo` (install, migrate, build the demo, serve) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Our machines keep the CPU torch wheel on local disk; use it when present (a bare registry
# lookup could otherwise resolve a multi-GB CUDA build).
PIP_FLAGS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
HOST ?= 127.0.0.1
PORT ?= 8000

# Test services: PostgreSQL and Redis from the environment, else the local default ports.
TEST_DATABASE_URL ?= $(or $(DATABASE_URL),postgres://postgres@127.0.0.1:5432/studyapp)
TEST_REDIS_URL ?= $(or $(REDIS_URL),redis://127.0.0.1:6379/0)

.PHONY: install demo serve test system-deps clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(PIP_FLAGS) -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# Debian packages the tests drive: docker-compose (validates docker-compose.yml without an engine)
# and chromium (the browser tests in tests/e2e drive /usr/bin/chromium with Playwright).
system-deps:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; \
	  else echo "Please install Debian's docker-compose package (sudo apt-get install docker-compose)"; fi; }
	@[ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "Please install Debian's chromium package (sudo apt-get install chromium); the browser tests need /usr/bin/chromium"; fi; }

demo: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py demo_setup --base-url http://$(HOST):$(PORT)
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

test: install system-deps
	$(BIN)/ruff check .
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) CELERY_BROKER_URL= \
	  $(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache
