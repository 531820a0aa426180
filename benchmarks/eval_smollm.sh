#!/usr/bin/env bash
# The RM-Bench and DSP measurements of docs/RESULTS.md ("Reward-model benchmarks") on the default
# SmolLM2-135M-Instruct, CPU, one thread per process. Every step resumes (--resume): rerunning a step
# after an interruption continues where it stopped. Items are scored in seeded random order,
# interleaved over domains, so a step stopped part-way has completed the seeded `--limit k` subset for
# some k; `summarize` then reports exactly that subset without scoring anything.
#   bash benchmarks/eval_smollm.sh rm-endorm    # RM-Bench: EndoRM + logprob-mean (one shared forward pass)
#   bash benchmarks/eval_smollm.sh dsp-endorm   # DSP 4x4: EndoRM + logprob-mean
#   bash benchmarks/eval_smollm.sh rm-judges    # RM-Bench: genrm-pointwise, verifier
#   bash benchmarks/eval_smollm.sh rm-pairwise  # RM-Bench: genrm-pairwise (18 judge calls per prompt)
#   bash benchmarks/eval_smollm.sh dsp-judges   # DSP 4x4: genrm-pointwise, verifier
#   bash benchmarks/eval_smollm.sh dsp-pairwise # DSP 4x4: genrm-pairwise (80 judge calls per query)
#   K=8 bash benchmarks/eval_smollm.sh summarize rm-endorm   # tables for the first K items per domain
#   bash benchmarks/eval_smollm.sh tables       # merge the summaries into runs/eval/{rm-bench,dsp}
set -euo pipefail
OUT=${OUT:-runs/eval}
export OMP_NUM_THREADS=1
E="endorm eval --threads 1 --seed 0 --items-per-batch 1 --resume --aggregation sum --gamma 1"  # the paper's formula, as measured then
case "${1:-}" in
  rm-endorm)  $E --benchmark rm-bench --method endorm,logprob-mean --limit "${LIMIT:-441}" --output-dir "$OUT/rm-endorm" ;;
  dsp-endorm) $E --benchmark dsp --method endorm,logprob-mean --limit "${LIMIT:-100}" --output-dir "$OUT/dsp-endorm" ;;
  rm-judges)  $E --benchmark rm-bench --method genrm-pointwise,verifier --limit "${LIMIT:-60}" --output-dir "$OUT/rm-judges" ;;
  rm-pairwise) $E --benchmark rm-bench --method genrm-pairwise --limit "${LIMIT:-20}" --output-dir "$OUT/rm-pairwise" ;;
  dsp-judges) $E --benchmark dsp --method genrm-pointwise,verifier --limit "${LIMIT:-100}" --output-dir "$OUT/dsp-judges" ;;
  dsp-pairwise) $E --benchmark dsp --method genrm-pairwise --limit "${LIMIT:-20}" --output-dir "$OUT/dsp-pairwise" ;;
  summarize)
    # re-summarise a (stopped) step on its first K items per domain; nothing new is scored
    step=$2; bench=rm-bench; [[ $step == dsp-* ]] && bench=dsp
    methods=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['method'])" "$OUT/$step/settings.json")
    $E --benchmark $bench --method "$methods" --limit "$K" --output-dir "$OUT/$step" --progress false ;;
  tables)
    # after `summarize` of each step (K per step) and, optionally, benchmarks/eval_derived.py into *-endorm-mean
    rm="$OUT/rm-endorm"; for d in rm-endorm-mean rm-judges rm-pairwise; do [[ -f $OUT/$d/results.json ]] && rm="$rm,$OUT/$d"; done
    dsp="$OUT/dsp-endorm"; for d in dsp-endorm-mean dsp-judges dsp-pairwise; do [[ -f $OUT/$d/results.json ]] && dsp="$dsp,$OUT/$d"; done
    endorm eval --benchmark rm-bench --merge "$rm" --output-dir "$OUT/rm-bench"
    endorm eval --benchmark dsp --merge "$dsp" --output-dir "$OUT/dsp" ;;
  *) echo "usage: $0 rm-endorm|dsp-endorm|rm-judges|rm-pairwise|dsp-judges|dsp-pairwise|summarize STEP|tables" >&2; exit 2 ;;
esac
