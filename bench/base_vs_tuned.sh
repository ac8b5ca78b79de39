#!/usr/bin/env bash
# Base vs tuned on this machine: the embedded SmolLM2 against the quickstart LoRA run (make quickstart first).
# CMMLU (6 subjects × 10 questions, 0-shot), generation metrics on the 13 held-out quickstart conversations (the last
# answer is the reference), and pairwise judging on examples/data/compare_prompts.jsonl (the judge is the base model
# itself, reading its verdict off the likelihoods of [[1]] / [[2]] / [[TIE]]: a weak judge, shown for the mechanics;
# use a strong --judge for real decisions).
# Writes runs/eval/report.md. Usage: bash bench/base_vs_tuned.sh [TUNED_DIR] [SHARED_DATA]
set -euo pipefail
TUNED=${1:-runs/quickstart}
DATA=${2:-${EMBER_SHARED_DATA:-../shared/data}}
BASE=smollm2-135m-instruct
EMBER=${EMBER:-ember}
OUT=runs/eval
SUBJECTS="chinese_history computer_science high_school_geography marketing nutrition world_religions"
mkdir -p $OUT
for side in base tuned; do
  model=$BASE; [ $side = tuned ] && model=$TUNED
  $EMBER eval bench --model "$model" --tasks cmmlu --data cmmlu="$DATA/eval/cmmlu" --subjects $SUBJECTS --limit 10 \
    --shots 0 --label $side --out $OUT/$side-cmmlu --no-progress
  $EMBER eval gen --model "$model" --data examples/data/quickstart_heldout.jsonl --max-new-tokens 96 --label $side \
    --out $OUT/$side-gen --no-progress
done
$EMBER eval compare --model-a "$TUNED" --model-b $BASE --prompts examples/data/compare_prompts.jsonl --judge $BASE \
  --judge-mode likelihood --max-new-tokens 96 --label tuned-vs-base --out $OUT/compare --no-progress
$EMBER eval report $OUT/base-cmmlu $OUT/tuned-cmmlu $OUT/base-gen $OUT/tuned-gen $OUT/compare --out $OUT/report.md
echo "report: $OUT/report.md"
