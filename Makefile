# posttrain — make targets. Everything runs from .venv/ (created by `make install`).
PY      := .venv/bin/python
CLI     := .venv/bin/posttrain
PIPELINE ?= pipelines/demo.yaml
CONFIG  ?=

.PHONY: install test lint demo pipeline cold-start reasoning-rl fusion general-rl distill help

help:
	@echo "make install   create .venv/ with torch (CPU wheel) and posttrain"
	@echo "make demo      run pipelines/demo.yaml on the embedded default model"
	@echo "make test      run the test suite (CPU, a few minutes)"
	@echo "make lint      ruff (configured in pyproject.toml)"
	@echo "make pipeline PIPELINE=pipelines/X.yaml"
	@echo "make cold-start | reasoning-rl | fusion | general-rl | distill   one stage (CONFIG=file.yaml to override)"
	@echo "make distill TEACHER=dir STUDENT=layers=6"

# torch goes in first, pinned, so nothing below pulls a CUDA build.
install: .venv/.installed
.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest -x --timeout 900

lint: install
	$(PY) -m ruff check .

demo: install
	$(CLI) run pipelines/demo.yaml

pipeline: install
	$(CLI) run $(PIPELINE)

cold-start: install
	$(CLI) stage cold_start --config $(or $(CONFIG),pipelines/stages/cold_start.yaml)

reasoning-rl: install
	$(CLI) stage reasoning_rl --config $(or $(CONFIG),pipelines/stages/reasoning_rl.yaml)

fusion: install
	$(CLI) stage fusion --config $(or $(CONFIG),pipelines/stages/fusion.yaml)

general-rl: install
	$(CLI) stage general_rl --config $(or $(CONFIG),pipelines/stages/general_rl.yaml)

distill: install
	$(CLI) distill --config $(or $(CONFIG),pipelines/stages/distill.yaml) \
		$(if $(TEACHER),--teacher $(TEACHER)) $(if $(STUDENT),--student $(STUDENT))
