# corral: two entry points for a fresh Debian machine, run as root.
#   make run   set up everything, start corrald, load the sample image, start a demo
#   make test  set up everything and run the whole test suite
SHELL := /bin/bash
# Debian's own interpreter: built with PGO and LTO, it starts each corral command
# some 4 ms sooner than an unoptimised build (pyenv's default) and runs corrald faster.
PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build
SOCKET ?= /run/corral/corral.sock
DEMO_PORT ?= 8080
APT_PACKAGES := python3-venv jq prometheus busybox-static umoci skopeo qemu-system-x86 cpio zstd curl procps iproute2 tini
CORRAL := $(VENV)/bin/corral -H unix://$(SOCKET)

.PHONY: run test deps venv image daemon stop bench clean

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
	@# setuptools' .pth hook would cost every corral command ~1 ms; nothing uses it
	$(VENV)/bin/pip uninstall -q -y setuptools
	$(PY) -m compileall -q supervisor runtime metrics >/dev/null
	touch $@

venv: $(VENV)/.installed

$(BUILD)/busybox-docker.tar: tests/images/build-sample.sh | deps
	tests/images/build-sample.sh $(BUILD)

image: deps $(BUILD)/busybox-docker.tar

daemon: venv
	@if $(CORRAL) version >/dev/null 2>&1; then echo "corrald already answers on $(SOCKET)"; else \
	  mkdir -p $(BUILD); \
	  nohup $(VENV)/bin/corrald --socket $(SOCKET) > $(BUILD)/corrald.log 2>&1 & echo $$! > $(BUILD)/corrald.pid; \
	  for i in $$(seq 1 50); do $(CORRAL) version >/dev/null 2>&1 && break; sleep 0.1; done; \
	  $(CORRAL) version >/dev/null || { cat $(BUILD)/corrald.log; exit 1; }; \
	  echo "corrald started (pid $$(cat $(BUILD)/corrald.pid)), log in $(BUILD)/corrald.log"; fi

run: deps venv image daemon
	$(CORRAL) load -i $(BUILD)/busybox-docker.tar
	@$(CORRAL) rm -f web >/dev/null 2>&1 || true
	$(CORRAL) run -d --name web --network host --memory 64m --init busybox:test \
	  sh -c 'mkdir -p /www && echo "hello from corral" > /www/index.html && exec httpd -f -p 127.0.0.1:$(DEMO_PORT) -h /www'
	@for i in $$(seq 1 30); do curl -fsS http://127.0.0.1:$(DEMO_PORT)/ 2>/dev/null && break; sleep 0.1; done
	$(CORRAL) run --rm busybox:test sh -c 'echo "hello from $$(hostname), PID $$$$ in its own namespaces"; ps'
	$(CORRAL) ps
	@echo
	@echo "Try next:"
	@echo "  export CORRAL_HOST=unix://$(SOCKET) PATH=$$PWD/$(VENV)/bin:\$$PATH"
	@echo "  corral ps -a                 # containers"
	@echo "  corral logs web              # the web server's output"
	@echo "  curl http://127.0.0.1:$(DEMO_PORT)/   # the web server, 64 MiB memory limit"
	@echo "  corral inspect web           # its full record"
	@echo "  corral run --rm busybox:test id"
	@echo "  make stop                    # stop corrald (it stops its containers first)"

stop:
	@if [ -f $(BUILD)/corrald.pid ] && kill -0 $$(cat $(BUILD)/corrald.pid) 2>/dev/null; then \
	  kill -TERM $$(cat $(BUILD)/corrald.pid); \
	  while kill -0 $$(cat $(BUILD)/corrald.pid) 2>/dev/null; do sleep 0.2; done; \
	  echo "corrald stopped"; rm -f $(BUILD)/corrald.pid; \
	else echo "no corrald started by make run is running"; fi

test: deps venv image
	CORRAL_SAMPLE_DIR=$(BUILD) $(PY) -m pytest -q -p no:cacheprovider
	tests/v2/run.sh

bench: deps venv image
	CORRAL_SAMPLE_DIR=$(BUILD) $(PY) tests/bench/bench_run.py
	CORRAL_SAMPLE_DIR=$(BUILD) $(PY) tests/bench/bench_supervision.py
	CORRAL_SAMPLE_DIR=$(BUILD) $(PY) tests/bench/bench_watchers.py
	CORRAL_SAMPLE_DIR=$(BUILD) $(PY) tests/bench/bench_metrics.py

clean:
	rm -rf $(BUILD) $(VENV)
