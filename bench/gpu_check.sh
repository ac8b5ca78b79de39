#!/usr/bin/env bash
# GPU-only checks, run on a lent GPU machine (see bench/results/gpu_check.md): single-GPU LoRA / full in bf16,
# DeepSpeed ZeRO-2 and ZeRO-3 (train.deepspeed and accelerate launch) and FSDP2 through accelerate, all through
# `ember train` on a random 12-layer Qwen2 (hidden 768) with the SmolLM2 tokenizer and the bundled dialogues.
# Usage (on the GPU machine, repo root): bash bench/gpu_check.sh OUTDIR   (wheels for missing packages in .whl/)
set -uo pipefail
OUT=${1:-/tmp/gpu_check}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export EMBER_NO_PROGRESS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"
cat > /tmp/gpu_cfg.yaml <<YAML
stage: sft
model:
  name_or_path: qwen2
  random_init: true
  tokenizer: .whl/smoltok
  config_overrides: {num_hidden_layers: 12, hidden_size: 768, intermediate_size: 2048, num_attention_heads: 12, num_key_value_heads: 4}
data: {datasets: [{path: examples/data/quickstart.jsonl}], max_length: 512, cache: false}
method: {type: lora, rank: 16, alpha: 32}
train: {max_steps: 30, per_device_train_batch_size: 8, logging_steps: 10, learning_rate: 1.0e-4, report_to: none, save_strategy: "no", seed: 1}
output: {dir: /tmp/gpu_run, overwrite: true}
YAML
run() {  # name, command...
  local name=$1; shift
  local start=$(date +%s.%N)
  "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  local secs=$(python3 -c "import time; print(round(time.time() - $start, 1))")
  local loss=$(grep -o "'train_loss': '[0-9.]*'" "$OUT/$name.log" | tail -1)
  local tps=$(grep -o "'train_tokens_per_second': '[0-9.]*'" "$OUT/$name.log" | tail -1)
  echo "| $name | rc=$rc | ${secs}s | $loss | $tps |" | tee -a "$OUT/summary.md"
}
echo "| run | exit | wall | final train loss | tokens/s |" > "$OUT/summary.md"
echo "|---|---|---|---|---|" >> "$OUT/summary.md"
run lora_bf16 python3 -m ember train /tmp/gpu_cfg.yaml
run full_bf16 python3 -m ember train /tmp/gpu_cfg.yaml method.type=full train.learning_rate=2e-5
run freeze_bf16 python3 -m ember train /tmp/gpu_cfg.yaml method.type=freeze method.trainable_layers=2 train.learning_rate=2e-5
run ds_zero2_arg torchrun --nproc_per_node 1 -m ember train /tmp/gpu_cfg.yaml train.deepspeed=examples/deepspeed/zero2.json
run ds_zero3_arg torchrun --nproc_per_node 1 -m ember train /tmp/gpu_cfg.yaml method.type=full train.learning_rate=2e-5 train.deepspeed=examples/deepspeed/zero3.json
run ds_zero2_accelerate accelerate launch --config_file examples/accelerate/zero2.yaml --num_processes 1 -m ember train /tmp/gpu_cfg.yaml
run fsdp2_accelerate_full accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 1 -m ember train /tmp/gpu_cfg.yaml method.type=full train.learning_rate=2e-5
run fsdp2_accelerate_lora accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 1 -m ember train /tmp/gpu_cfg.yaml
for f in "$OUT"/*.log; do echo "== $f"; grep -E "Error|error:|Traceback" "$f" | head -5; done > "$OUT/errors.txt"
cat "$OUT/summary.md"
