#!/usr/bin/env bash
# The full-set frontier of issue #27: both text sets whole, 500 cloze items a set, every
# training-free method and the lm_head option at densities 0.3, 0.5 and 0.7 (DENSITIES=0.5 for the
# one-density run), quality only (no free generation, no lm-eval).
# Resumable: every scored batch goes to benchmarks/results/frontier-gemma-3-270m-full.journal.jsonl
# (committed, unlike other journals: commit it as the run goes, and a fresh clone resumes there); rerun
# this same script to continue where a stopped run left off. The journal keys on
# the methods, not the densities, so the three-density run reads what the run at 0.5 (DENSITIES=0.5)
# scored and adds only the 0.3 and 0.7 variants. Hours of CPU on 2 cores (the methods at one density:
# several hours; the two further densities: about twice that).
set -euo pipefail
cd "$(dirname "$0")/.."
exec tda frontier --model gemma-3-270m --dtype fp32 --set pydoc-text,bierce-text \
  --methods tt,griffin,tda,static,random,cats,teal,wina,chess,scap,rsparse,tt+head0.7 \
  --densities "${DENSITIES:-0.3,0.5,0.7}" \
  --cloze-limit 500 --gen-prompts 0 --mc-limit 0 --rounds 3 --resume \
  --out benchmarks/results/frontier-gemma-3-270m-full "$@"
