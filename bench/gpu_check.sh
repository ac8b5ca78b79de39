#!/usr/bin/env bash
# GPU readiness check for one GPU, in under 8 minutes: every step is an `ember train` run measured by
# bench/gpu_run.py (steady-state tokens/s, MFU, peak GPU memory, and `ember plan`'s predicted peak when that command
# exists), each step independent of the others:
#   smol_lora        SmolLM2-135M LoRA r16 (all linear layers), bf16, SDPA attention
#   smol_qlora       the same on a 4-bit nf4 base (bitsandbytes), bf16 compute
#   smol_zero2       DeepSpeed ZeRO-2, LoRA     (torchrun --nproc_per_node 1, train.deepspeed=examples/deepspeed/zero2.json)
#   smol_zero3       DeepSpeed ZeRO-3, full     (torchrun, zero3.json)
#   llama8b_full     random Llama-3-8B-shaped model (config only), full fine-tuning in bf16, seq 2048, gradient
#                    checkpointing, the micro-batch that fills ~85% of the GPU (from `ember plan`, else an estimate;
#                    halved and rerun after an out-of-memory failure)
#   llama8b_lora     the same model, LoRA r16 on every linear layer
#   smol_fsdp2       FSDP2 through accelerate (examples/accelerate/fsdp.yaml, one process), full
#   smol_lora_fa2    FlashAttention 2 instead of SDPA, padding-free as data.packing auto now runs it (its train loss
#                    should match smol_lora's within bf16 rounding; skipped when flash_attn is not installed)
#   smol_zero3_accel ZeRO-3 through `accelerate launch --config_file examples/accelerate/zero3.yaml`
#   smol_device_map  naive model parallelism: model.device_map=auto + max_memory per GPU, one process (not tiny mode)
#   smol_gptq_lora   LoRA (method.type: lora) on a GPTQ int4 base quantized in the script from SmolLM2 (skipped when
#                    gptqmodel/optimum are not importable: the `gptq` extra)
# Steps run in that order while the time budget lasts (GPU_CHECK_BUDGET seconds, default 450); a step that would
# not fit is recorded as skipped. Each writes OUTDIR/NAME.log, NAME.rc and (from gpu_run.py) NAME.json; the end
# writes OUTDIR/summary.md, summary.json, env.txt and bundle.tgz (everything). SmolLM2's weights (538 MB) cannot
# travel to the GPU machine (64 MiB per call), so the SmolLM2 steps train a random model of exactly its architecture,
# from .whl/smollm2/config.json, unless .whl/smollm2/model.safetensors is there: speed and memory are the same,
# losses are not meaningful.
#
# Usage, on the GPU machine from the repository root (after `bash bench/gpu_wheels.sh` here):
#   bash bench/gpu_check.sh OUTDIR [RETURN_DIR]      # RETURN_DIR gets summary.md, summary.json and bundle.tgz
#   device tool: run(command="bash bench/gpu_check.sh /tmp/gpu_check $OUT", carry=[".whl"], timeout_s=600)
# Tiny mode, to check the script's flow on a CPU in a few minutes: GPU_CHECK_TINY=1 bash bench/gpu_check.sh OUTDIR
# Some steps only (a re-check after a fix): GPU_CHECK_STEPS=smol_fsdp2,smol_zero3_accel bash bench/gpu_check.sh OUTDIR
set -uo pipefail
cd "${GPU_CHECK_ROOT:-$(dirname "$0")/..}"
OUT=${1:?usage: bash bench/gpu_check.sh OUTDIR [RETURN_DIR]}
RETURN_DIR=${2:-}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
TINY=${GPU_CHECK_TINY:-0}
BUDGET=${GPU_CHECK_BUDGET:-450}
PY=${PYTHON:-python3}
[ "$TINY" = 1 ] && [ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
WORK=${GPU_CHECK_WORK:-/tmp/ember_gpu_check}
rm -rf "$WORK" && mkdir -p "$WORK"

# Wheels for what the GPU machine lacks (deepspeed, bitsandbytes, ...), installed beside its own packages.
if ls .whl/*.whl >/dev/null 2>&1 && [ "$TINY" != 1 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
    > "$OUT/pip.log" 2>&1 || echo "warning: wheel install failed, see pip.log" | tee -a "$OUT/env.txt"
  export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export EMBER_CACHE="$WORK/cache" HF_HUB_OFFLINE=1 EMBER_NO_PROGRESS=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TRANSFORMERS_NO_ADVISORY_WARNINGS=1

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" - <<'PYTHON' 2>&1
import importlib, importlib.metadata as md, torch
print("python", __import__("sys").version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("transformers", "peft", "accelerate", "deepspeed", "bitsandbytes", "flash_attn", "pydantic", "tokenizers"):
    try:
        print(f"{name} {md.version(name.replace('_', '-'))}")
    except md.PackageNotFoundError:
        print(f"{name} not installed")
PYTHON
} | tee -a "$OUT/env.txt"
GPU_RUN_PLAN=no
"$PY" -m ember plan --help >/dev/null 2>&1 && GPU_RUN_PLAN=yes
export GPU_RUN_PLAN
echo "ember plan available: $GPU_RUN_PLAN" | tee -a "$OUT/env.txt"

SMOL=.whl/smollm2
SMOL_MODEL=("model.name_or_path=$SMOL")
if [ ! -f "$SMOL/model.safetensors" ]; then
  SMOL_MODEL+=("model.random_init=true")
  echo "SmolLM2: random weights in its architecture ($SMOL/config.json); no $SMOL/model.safetensors" | tee -a "$OUT/env.txt"
fi
cat > "$WORK/smol.yaml" <<YAML
stage: sft
model: {name_or_path: $SMOL, attn_implementation: sdpa}
data: {datasets: [{path: examples/data/quickstart.jsonl}], max_length: 1024, cache: true}
method: {type: lora, rank: 16, alpha: 32, dropout: 0.0}
train: {max_steps: 20, per_device_train_batch_size: 8, learning_rate: 1.0e-4, lr_scheduler_type: constant,
        logging_steps: 5, report_to: none, save_strategy: "no", bf16: true, seed: 1}
output: {dir: $WORK/runs/smol, overwrite: true, plot_loss: false}
YAML
cat > "$WORK/llama8b.yaml" <<YAML
stage: pt
model:
  name_or_path: llama
  random_init: true
  tokenizer: $SMOL
  dtype: bfloat16
  attn_implementation: sdpa
  config_overrides: {hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32, num_attention_heads: 32,
                     num_key_value_heads: 8, vocab_size: 128256, max_position_embeddings: 8192,
                     tie_word_embeddings: false}
data: {datasets: [{path: examples/data/pretrain_zh.txt, ratio: 120}], max_length: 2048, cache: true}
method: {type: full, rank: 16, alpha: 32, dropout: 0.0}
train: {max_steps: 8, per_device_train_batch_size: 1, gradient_checkpointing: true, learning_rate: 1.0e-5,
        lr_scheduler_type: constant, logging_steps: 1, report_to: none, save_strategy: "no", bf16: true, seed: 1}
output: {dir: $WORK/runs/llama8b, overwrite: true, plot_loss: false}
YAML
TINY_SMOL=() TINY_8B=() WARMUP=2 BIG_CAP=64
if [ "$TINY" = 1 ]; then  # a CPU: the same flow on 2-layer models, a few steps
  TINY_SMOL=("model.config_overrides={num_hidden_layers: 2, hidden_size: 64, intermediate_size: 128, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16}"
             train.max_steps=5 train.bf16=null data.max_length=256 train.per_device_train_batch_size=2)
  TINY_8B=("model.config_overrides={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 49152}"
           train.max_steps=5 train.bf16=null data.max_length=256 "data.datasets=[{path: examples/data/pretrain_zh.txt, ratio: 4}]")
  WARMUP=1 BIG_CAP=2
fi

START=$SECONDS
ONLY=${GPU_CHECK_STEPS:-}  # e.g. GPU_CHECK_STEPS=smol_fsdp2,smol_zero3_accel runs just those (a re-check)
step() {  # NAME SECONDS_NEEDED TIMEOUT COMMAND...: run unless the budget is spent; never stops the script
  local name=$1 need=$2 limit=$3; shift 3
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
    echo "skipped: not selected (GPU_CHECK_STEPS=$ONLY)" > "$OUT/$name.rc"; return
  fi
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt "$need" ]; then
    echo "skipped: ${left}s of the budget left, needs ~${need}s" > "$OUT/$name.rc"
    echo "== $name: skipped (budget)"; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout -k 15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "timeout after ${limit}s" >> "$OUT/$name.log"
  echo "$rc" > "$OUT/$name.rc"
  echo "   exit $rc in $((SECONDS - t0))s: $(grep -h '^gpu_run:' "$OUT/$name.log" | cut -c1-220)"
}
RUN=("$PY" bench/gpu_run.py --out "$OUT" --plan --warmup "$WARMUP")
TORCHRUN1=("$PY" -m torch.distributed.run --standalone --nproc_per_node 1 bench/gpu_run.py --out "$OUT" --plan
           --warmup "$WARMUP")
ACCEL1=("$PY" -m accelerate.commands.launch --num_processes 1 --main_process_port 29517)  # + --config_file F SCRIPT
AFTER_ACCEL=(bench/gpu_run.py --out "$OUT" --plan --warmup "$WARMUP")
BIG=("${RUN[@]}" --fill-memory --max-micro-batch "$BIG_CAP" --oom-retries 2 "$WORK/llama8b.yaml")  # micro-batch halved after out-of-memory

SMOL_ARGS=("$WORK/smol.yaml" "${SMOL_MODEL[@]}")
step smol_lora 40 120 "${RUN[@]}" --name smol_lora "${SMOL_ARGS[@]}" "output.dir=$WORK/runs/smol_lora" "${TINY_SMOL[@]}"
step smol_qlora 40 120 "${RUN[@]}" --name smol_qlora "${SMOL_ARGS[@]}" method.type=qlora \
  "output.dir=$WORK/runs/smol_qlora" "${TINY_SMOL[@]}"
step smol_zero2 45 150 "${TORCHRUN1[@]}" --name smol_zero2 "${SMOL_ARGS[@]}" \
  train.deepspeed=examples/deepspeed/zero2.json "output.dir=$WORK/runs/smol_zero2" "${TINY_SMOL[@]}"
step smol_zero3 45 150 "${TORCHRUN1[@]}" --name smol_zero3 "${SMOL_ARGS[@]}" method.type=full train.learning_rate=1e-5 \
  train.deepspeed=examples/deepspeed/zero3.json "output.dir=$WORK/runs/smol_zero3" "${TINY_SMOL[@]}"
# The 8B run ends by saving 16 GB of weights: into RAM (/dev/shm) when it has room, which is much faster than a disk.
BIGOUT=$WORK/runs
[ -d /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 40000000 ] && BIGOUT=/dev/shm/ember_gpu_check
step llama8b_full 100 240 "${BIG[@]}" --name llama8b_full method.type=full "output.dir=$BIGOUT/llama8b_full" \
  "${TINY_8B[@]}"
rm -rf "$BIGOUT/llama8b_full"
step llama8b_lora 80 200 "${BIG[@]}" --name llama8b_lora method.type=lora "output.dir=$BIGOUT/llama8b_lora" \
  "${TINY_8B[@]}"
rm -rf "$BIGOUT/llama8b_lora"
step smol_fsdp2 40 120 "${ACCEL1[@]}" --config_file examples/accelerate/fsdp.yaml "${AFTER_ACCEL[@]}" --name smol_fsdp2 \
  "${SMOL_ARGS[@]}" method.type=full train.learning_rate=1e-5 "output.dir=$WORK/runs/smol_fsdp2" "${TINY_SMOL[@]}"
if "$PY" -c "import flash_attn" >/dev/null 2>&1; then
  step smol_lora_fa2 40 120 "${RUN[@]}" --name smol_lora_fa2 "${SMOL_ARGS[@]}" \
    model.attn_implementation=flash_attention_2 "output.dir=$WORK/runs/smol_lora_fa2" "${TINY_SMOL[@]}"
else
  echo "skipped: flash_attn is not installed" > "$OUT/smol_lora_fa2.rc"
fi
step smol_zero3_accel 45 150 "${ACCEL1[@]}" --config_file examples/accelerate/zero3.yaml "${AFTER_ACCEL[@]}" \
  --name smol_zero3_accel "${SMOL_ARGS[@]}" method.type=full train.learning_rate=1e-5 \
  "output.dir=$WORK/runs/smol_zero3_accel" "${TINY_SMOL[@]}"
# Naive model parallelism: model.device_map=auto with a max_memory cap per visible GPU, one process (on one GPU this
# checks the placement path only; with several, the layers spread over them). device_map places loaded weights, so
# a random model of SmolLM2's architecture is saved first when .whl/smollm2 has no weights. Needs a GPU.
if [ "$TINY" = 1 ]; then
  echo "skipped: needs a GPU (device_map places weights on GPUs)" > "$OUT/smol_device_map.rc"
else
  DM_MODEL=$SMOL
  if [ ! -f "$SMOL/model.safetensors" ]; then
    DM_MODEL=$WORK/smol_saved
    "$PY" -c "import sys; from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(sys.argv[1])).save_pretrained(sys.argv[2])
AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])" "$SMOL" "$DM_MODEL" \
      > "$OUT/smol_device_map.prep.log" 2>&1
  fi
  MAXMEM=$("$PY" -c "import torch; print('{' + ', '.join(f'{i}: 40GiB' for i in range(torch.cuda.device_count())) + '}')")
  step smol_device_map 40 120 "${RUN[@]}" --name smol_device_map "$WORK/smol.yaml" "model.name_or_path=$DM_MODEL" \
    model.device_map=auto "model.max_memory=$MAXMEM" "output.dir=$WORK/runs/smol_device_map"
fi

# GPTQ base + LoRA: the base is quantized here first (transformers' GPTQConfig through optimum + gptqmodel: 4-bit,
# 16 random calibration sequences; on the GPU in fp16, in tiny mode on the CPU in fp32) from SmolLM2's weights or a
# random model of its architecture, then trained as a plain LoRA run (Ember targets the quantized layers).
if ! "$PY" -c "import gptqmodel, optimum" >/dev/null 2>&1; then
  echo "skipped: gptqmodel/optimum are not importable (pip install 'ember[gptq]')" > "$OUT/smol_gptq_lora.rc"
  echo "== smol_gptq_lora: SKIP (gptqmodel/optimum are not importable)"
else
  GPTQ_DIR=$WORK/smol_gptq
  if [ -z "$ONLY" ] || [[ ",$ONLY," == *",smol_gptq_lora,"* ]]; then
    timeout -k 10 240 "$PY" - "$SMOL" "$GPTQ_DIR" "$TINY" > "$OUT/smol_gptq_lora.prep.log" 2>&1 <<'PYTHON'
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPTQConfig

src, dst, tiny = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
tok = AutoTokenizer.from_pretrained(src)
if (Path(src) / "model.safetensors").is_file() and not tiny:
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
else:
    config = AutoConfig.from_pretrained(src)
    if tiny:
        config.update(dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
model.save_pretrained(dst.with_name(dst.name + "_fp32"))
tok.save_pretrained(dst.with_name(dst.name + "_fp32"))
g = torch.Generator().manual_seed(1)
calibration = [{"input_ids": torch.randint(0, len(tok), (1, 64), generator=g),
                "attention_mask": torch.ones(1, 64, dtype=torch.long)} for _ in range(16)]
cuda = torch.cuda.is_available() and not tiny
q = GPTQConfig(bits=4, group_size=32 if tiny else 128, desc_act=False, dataset=calibration)
model = AutoModelForCausalLM.from_pretrained(dst.with_name(dst.name + "_fp32"), quantization_config=q,
                                             dtype=torch.float16 if cuda else torch.float32,
                                             device_map="cuda" if cuda else "cpu")
model.config.quantization_config.dataset = None  # tensors: not JSON, and not needed to load the checkpoint
model.save_pretrained(dst)
tok.save_pretrained(dst)
print("gptq checkpoint:", dst, "quantized on", "cuda" if cuda else "cpu")
PYTHON
    [ $? -eq 0 ] || echo "GPTQ checkpoint not built, see smol_gptq_lora.prep.log" | tee -a "$OUT/env.txt"
  fi
  GPTQ_TINY=()
  [ "$TINY" = 1 ] && GPTQ_TINY=(train.max_steps=5 train.bf16=null data.max_length=256 train.per_device_train_batch_size=2)
  step smol_gptq_lora 40 120 "${RUN[@]}" --name smol_gptq_lora "$WORK/smol.yaml" "model.name_or_path=$GPTQ_DIR" \
    "output.dir=$WORK/runs/smol_gptq_lora" "${GPTQ_TINY[@]}"
fi

echo "total: $((SECONDS - START))s of steps" | tee -a "$OUT/env.txt"
"$PY" bench/gpu_summary.py "$OUT" > "$OUT/summary.md" 2> "$OUT/summary.err"
cat "$OUT/summary.md"
tar czf "$WORK/bundle.tgz" -C "$OUT" . && mv "$WORK/bundle.tgz" "$OUT/bundle.tgz"
if [ -n "$RETURN_DIR" ]; then
  mkdir -p "$RETURN_DIR" && cp "$OUT/summary.md" "$OUT/summary.json" "$OUT/env.txt" "$OUT/bundle.tgz" "$RETURN_DIR/"
fi
