#!/usr/bin/env bash
# The full-set frontier of issue #27 at density 0.5: both text sets whole, 500 cloze items a set,
# every training-free method and the lm_head option, quality only (no free generation, no lm-eval).
# Resumable: every scored batch goes to benchmarks/results/frontier-gemma-3-270m-full.journal.jsonl
# (git-ignored); rerun this same script to continue where a stopped run left off. Hours of CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
exec tda frontier --model gemma-3-270m --dtype fp32 --set pydoc-text,bierce-text \
  --methods tt,griffin,tda,static,random,cats,teal,wina,chess,scap,rsparse,tt+head0.7 --densities 0.5 \
  --cloze-limit 500 --gen-prompts 0 --mc-limit 0 --rounds 3 --resume \
  --out benchmarks/results/frontier-gemma-3-270m-full "$@"
