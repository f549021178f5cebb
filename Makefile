# Every target builds its own virtual environment from nothing (torch pinned to the CPU build that
# this project's machines carry), then runs. `make test` is what CI runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# what running vgen needs, no test extra (that one brings triton, about 1 GB, for the kernel tests)
RUNTIME_STAMP := $(VENV)/.runtime-stamp
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: setup test test-fast demo bench bench-dit bench-cp bench-batch bench-vico-zeroscope clean help eval-i4vgen eval-i4vgen-oracle probe-i4vgen eval-streaming eval-streaming-wan bench-streaming-wan eval-vico eval-vico-wan tune-vico-wan bench-vico-wan device-check device-wheels measure-memory

help:
	@echo "make test    - create/refresh .venv and run the test suite (what CI runs)"
	@echo "make demo    - create/refresh .venv (runtime only) and make outputs/demo*.mp4 with the default model, then score them"
	@echo "make bench   - speed and memory benchmarks (prints numbers)"
	@echo "make bench-dit - Wan decode peak memory at 17/81/241 frames; vanilla vs WanPipeline/LTXPipeline (median of 5)"
	@echo "make bench-cp - one Wan video over 1 vs 2 CPU processes (context parallelism; not representative of GPUs)"
	@echo "make bench-batch - vgen batch of 8 toy jobs: 2 processes x 1 thread (--nproc 2) vs 1 process x 2 threads"
	@echo "make bench-vico-zeroscope - Vico vs vanilla at ZeroScope's layout and size (1/4 width; ~1.5 h on a CPU)"
	@echo "make bench-vico-wan - Vico vs vanilla on wan-quarter (Wan 2.1 1.3B's layout, CPU-sized: 5 frames, 160x256)"
	@echo "make measure-memory - peak memory of vanilla sampling, measured against vgen.sizes' estimate (docs/sizes.md)"
	@echo "make setup   - only create/refresh .venv"
	@echo "make device-check - on a GPU machine: kernel tests on CUDA, methods and kernels timed (ARGS=--dry-run: plan + imports)"
	@echo "make device-wheels - fill .whl/ with the wheels device-check installs offline on a GPU machine"
	@echo "make eval-i4vgen / eval-streaming / eval-vico - toy-world quality comparisons (long on a CPU)"
	@echo "make eval-vico-wan [TOYWAN=folder] - Vico vs vanilla toy-wan, held-out prompts (tune-vico-wan: lr on tuning prompts)"
	@echo "make eval-zs2 / eval-zs2-wan [TOYWAN=folder] - ZS2 vs per-frame on held-out prompts (toy-t2i / toy-wan); tune-zs2-wan, bench-zs2-wan"
	@echo "make eval-streaming-wan [TOYWAN=folder] - StreamingT2V on toy-wan at 241 frames vs its unconditioned chunks (paired intervals)"
	@echo "make bench-streaming-wan - StreamingT2V on the benchmark-size random Wan: peak memory and s/frame at 64 vs 512 frames"
	@echo "make probe-i4vgen - where I4VGen loses its anchor: the detector on anchor, NI-VSDS video, final video"
	@echo "make eval-i4vgen-wan [TOYWAN=folder] - I4VGen vs vanilla on toy-wan, held-out prompts, paired intervals"
	@echo "make tune-i4vgen-wan [TOYWAN=folder] - I4VGen's toy-wan settings tried on the tuning prompts (0-23)"
	@echo "make bench-i4vgen-wan - I4VGen's time vs vanilla on wan-quarter (17 frames at 128x224 on a CPU)"
	@echo "make eval-i4vgen-oracle - I4VGen started from the toy world's own anchor / clip: what a perfect stage could give"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

$(RUNTIME_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e .
	touch $(RUNTIME_STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# A clean clip from the default model, then ZS2 beside per-frame sampling of the same image model (toy-t2i) on
# one prompt; vgen eval reads all three (tests/test_readme.py checks the detector's reading of each).
demo: $(RUNTIME_STAMP)
	$(BIN)/vgen generate "a red circle moving right" --out outputs/demo.mp4 --gif --overwrite
	$(BIN)/vgen generate "a yellow diamond" --method vanilla --model toy-t2i --out outputs/demo-per-frame.mp4 --gif --overwrite
	$(BIN)/vgen generate "a yellow diamond" --method zs2 --out outputs/demo-zs2.mp4 --gif --overwrite
	$(BIN)/vgen eval outputs/demo.mp4 outputs/demo-per-frame.mp4 outputs/demo-zs2.mp4

bench: $(STAMP)
	$(BIN)/python scripts/bench_core.py
	$(BIN)/python scripts/bench_flow.py --quick
	$(BIN)/python scripts/bench_zs2.py
	$(BIN)/python scripts/bench_vico.py
	$(BIN)/python scripts/bench_vico_update.py --no-measure
	$(BIN)/python scripts/bench_i4vgen.py
	$(BIN)/python scripts/bench_streaming.py --quick
	$(BIN)/python scripts/bench_kernels.py --quick --repeats 3
	$(BIN)/python scripts/bench_kernels.py --set dit --size toy --no-compile --repeats 5
	$(BIN)/python scripts/bench_kernels.py --set dit --size mid --no-compile --repeats 3

# Wan's streamed decode against vae.decode by length, and our loop against diffusers' pipelines on the
# benchmark-size random Wan / LTX (CPU-sized by default; the device check runs them at full size on a GPU)
bench-dit: $(STAMP)
	$(BIN)/python scripts/bench_wan_decode.py
	$(BIN)/python scripts/bench_dit_loop.py

# jobs per minute of one batch split over processes (torch.distributed, gloo) against one process with the threads
bench-batch: $(STAMP)
	$(BIN)/python scripts/bench_batch.py --jobs 8

# peak RSS of one vanilla step per size, fresh process each, against vgen.sizes.estimate_peak (docs/sizes.md)
measure-memory: $(STAMP)
	$(BIN)/python scripts/measure_peak_memory.py --set all --json docs/sizes-measured.json

# one video over 1 vs 2 processes (context parallelism, gloo on CPU: not representative of GPUs), tiny and
# benchmark-size random Wan; the device check times 2/4/8 GPUs
bench-cp: $(STAMP)
	$(BIN)/python scripts/bench_context_parallel.py --model tiny-random-wan --steps 10
	$(BIN)/python scripts/bench_context_parallel.py --model wan-quarter --frames 9 --height 64 --width 64 --steps 3

# one update's cost per checkpoint policy, then end to end (50 steps, 16 frames, 320x512)
bench-vico-zeroscope: $(STAMP)
	$(BIN)/python scripts/bench_vico_update.py --no-flops --repeats 1
	$(BIN)/python scripts/bench_vico.py --models zeroscope-quarter --repeats 1 --memory-steps 4

# Vico's key-word agreement with the public code's rule, then base vs Vico on 100 + 100 held-out prompts:
# prompts 100-199 of each sequence, past the 0-99 the toy's lr was chosen on (resumable: re-running continues
# where it stopped)
eval-vico: $(STAMP)
	$(BIN)/python scripts/key_tokens_agreement.py
	$(BIN)/python scripts/compare_vico.py --n 100 --offset 100 --json outputs/compare_vico/heldout.json --resume

# Vico on toy-wan (issue 35): base vs Vico on held-out prompts 100.. of each sequence, 2 and 3 objects, with the
# model's own vgen.yaml vico section (its lr, chosen by tune-vico-wan on prompts 0..); 17 frames, 20 UniPC steps,
# guidance 5. TOYWAN: the built-in name or a folder (e.g. an interim export).
# VICO_WAN_SET: the Vico run's keys (default: none beyond the model's own; vico.lr=0.1 for a folder whose vgen.yaml
# has no vico section yet)
VICO_WAN_N ?= 50
VICO_WAN_SET ?= vico.select=official
eval-vico-wan: $(STAMP)
	$(BIN)/python scripts/compare_vico.py --model $(TOYWAN) --frames 17 --scheduler model --n $(VICO_WAN_N) --offset 100 \
	    --variant vico=$(VICO_WAN_SET) --json outputs/compare_vico/heldout-wan.json --resume

# the lr grid on tuning prompts 0..5 of each sequence (small fixed budget; docs/vico.md has the table)
tune-vico-wan: $(STAMP)
	$(BIN)/python scripts/compare_vico.py --model $(TOYWAN) --frames 17 --scheduler model --n 6 --offset 0 \
	    --variant lr1e-3=vico.lr=1e-3 --variant lr1e-2=vico.lr=1e-2 --variant lr1e-1=vico.lr=1e-1 \
	    --variant lr3e-1=vico.lr=3e-1 --variant lr1=vico.lr=1 --json outputs/compare_vico/tune-wan.json --resume

# Vico's cost on wan-quarter (Wan 2.1 1.3B's 30 blocks, 12 heads, quarter widths): time and peak memory against
# vanilla, the model's own scheduler, 20 steps (the public schedule updates at every one); CPU-sized
bench-vico-wan: $(STAMP)
	$(BIN)/python scripts/bench_vico.py --models wan-quarter --scheduler model --frames 5 --height 160 --width 256 \
	    --steps 20 --repeats 1 --memory-steps 4

# The one prepared command for a GPU machine (< 8 min on one H200). No venv there: it runs on the machine's
# python3 with its torch and triton, and installs what the machine lacks from .whl/ (make device-wheels,
# here), offline. ARGS=--dry-run prints the plan and checks the imports on any machine.
device-check:
	$(PYTHON) scripts/device_check.py $(ARGS)

device-wheels:
	$(PYTHON) scripts/device_check.py --download-wheels

# prompts 102-203 of the sequence: the toy's I4VGen settings were chosen on 0-101 (--offset 0 to tune on those)
eval-i4vgen: $(STAMP)
	$(BIN)/python scripts/compare_i4vgen.py --offset 102 --out runs/compare_i4vgen-heldout

# upper bounds on the same prompts: a perfect anchor (NI-VSDS and regeneration run on it), a perfect animated clip
# (only the regeneration runs), each with the toy's t_regen and the public code's p_re 1
eval-i4vgen-oracle: $(STAMP)
	$(BIN)/python scripts/compare_i4vgen.py --offset 102 --out runs/compare_i4vgen-oracle \
		--variant "oracle=anchor" --variant "oracle=clip" --variant "oracle=anchor i4vgen.t_regen=1.0" \
		--variant "oracle=clip i4vgen.t_regen=1.0" \
		--variant "oracle=anchor i4vgen.warm_step_size=10 i4vgen.t_regen=1.0 i4vgen.regen_hold=none"

probe-i4vgen: $(STAMP)
	$(BIN)/python scripts/probe_i4vgen_stages.py --prompts 48

# I4VGen on toy-wan against vanilla toy-wan: the same held-out prompts 102-203 and seeds as eval-i4vgen, 17 frames
# (toy-wan's length), 20 steps of the model's own UniPC flow scheduler, guidance 5; the i4vgen keys come from the
# model's vgen.yaml (tune with --offset 0). Resumable; TOYWAN=<a Wan folder> for a checkpoint that is not shipped.
TOYWAN ?= toy-wan
.PHONY: eval-i4vgen-wan tune-i4vgen-wan bench-i4vgen-wan
eval-i4vgen-wan: $(STAMP)
	$(BIN)/python scripts/compare_i4vgen.py --model $(TOYWAN) --frames 17 --steps 20 --scheduler auto --offset 102 \
		--out runs/compare_i4vgen-wan-heldout

# the small tuning budget, on tuning prompts 0-23 only: the row "i4vgen" is the model's vgen.yaml section (the public
# AnimateDiff values when it has none), the variants the UNet toy's values (α 1 throughout, p_re 0.8, the middle
# latent frame held) and more candidates; write the winner into toy-wan's vgen.yaml, then run eval-i4vgen-wan
tune-i4vgen-wan: $(STAMP)
	$(BIN)/python scripts/compare_i4vgen.py --model $(TOYWAN) --frames 17 --steps 20 --scheduler auto --offset 0 \
		--prompts 24 --out runs/tune_i4vgen-wan \
		--variant "i4vgen.warm_step_size=1 i4vgen.t_regen=0.8" \
		--variant "i4vgen.warm_step_size=1 i4vgen.t_regen=0.8 i4vgen.regen_hold=middle" \
		--variant "i4vgen.warm_step_size=1 i4vgen.t_regen=0.8 i4vgen.candidates=10"

# I4VGen's cost on the 1.3B layout (wan-quarter) against vanilla; 128x224 and 10 steps so a CPU times it in minutes
# (native 480x832 on a GPU: ARGS="--height 480 --width 832 --steps 25 --repeats 3")
bench-i4vgen-wan: $(STAMP)
	$(BIN)/python scripts/bench_i4vgen.py --model wan-quarter --frames 17 --steps 10 --height 128 --width 224 \
		--repeats 1 $(ARGS)

# long (hours on a CPU): re-running continues where it stopped
eval-streaming: $(STAMP)
	$(BIN)/python scripts/compare_streaming.py --out outputs/compare_streaming --resume --json outputs/compare_streaming/records.json

# ZS2 against per-frame sampling of the same model, paired 95% intervals: held-out prompts 100-105 (one object) and
# 100-105 (two) of each sequence, past the 0-5 the settings were tuned on (tune-zs2-wan). eval-zs2: the toy image
# model (with Text2Video-Zero); eval-zs2-wan: toy-wan's image mode (TOYWAN=<folder> for an exported checkpoint),
# with the video model's own vanilla video beside it; bench-zs2-wan: time on the benchmark-size random Wan.
.PHONY: eval-zs2 eval-zs2-wan tune-zs2-wan bench-zs2-wan
eval-zs2: $(STAMP)
	$(BIN)/python scripts/compare_zs2.py --offset 100 --prompts 6 --seeds 2

eval-zs2-wan: $(STAMP)
	$(BIN)/python scripts/compare_zs2.py --model $(TOYWAN) --offset 100 --prompts 6 --seeds 2 --vanilla

tune-zs2-wan: $(STAMP)
	$(BIN)/python scripts/compare_zs2.py --model $(TOYWAN) --offset 0 --prompts 3 --seeds 1 \
		--variant "zs2.momentum=0.9" --variant "zs2.momentum=0.5" --variant "zs2.momentum=1.0" \
		--variant "zs2.lam=0.05" --variant "zs2.lam=0.3" --variant "zs2.rho=0" --variant "zs2.momentum=0"

bench-zs2-wan: $(STAMP)
	$(BIN)/python scripts/bench_zs2.py --model wan-quarter --frames 4 --height 240 --width 416 --steps 3 --repeats 2

# StreamingT2V on a Wan model (training-free, chunks in latent time) against the same model's chunks with no
# conditioning, 241 frames, held-out prompts (--seed 0). Choose settings on other prompts, e.g. ARGS="--seed 1000
# --prompts 8 --cond-frames 4 --out outputs/tune_streaming_wan --json outputs/tune_streaming_wan/records.json"
# TOYWAN: the toy-wan folder
eval-streaming-wan: $(STAMP)
	$(BIN)/python scripts/compare_streaming.py --model $(TOYWAN) --frames 241 --prompts 24 \
		--modes training-free training-free-dc independent \
		--out outputs/compare_streaming_wan --resume --json outputs/compare_streaming_wan/records.json $(ARGS)

# peak memory and cost per frame of streaming on wan-quarter (Wan 2.1's layout) at 64 vs 512 frames (CPU-sized: 128x128)
bench-streaming-wan: $(STAMP)
	$(BIN)/python scripts/bench_streaming.py --model wan-quarter --frames 64 512 --steps 2 --chunk 17 --cond-frames 4 \
		--height 128 --width 128 --no-modes

clean:
	rm -rf $(VENV) outputs .pytest_cache
