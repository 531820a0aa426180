#!/usr/bin/env bash
# The reward-form study of docs/RESULTS.md ("Which form of the endogenous reward"): one forward pass per
# response keeps log pi and V(s_t) per token, and every aggregation x gamma x contrast is read off it.
# Every step resumes (--resume): rerun it after an interruption, in this or a later session. Items are
# scored in seeded order interleaved over domains, so a stopped step has completed a balanced prefix.
# Steps write into $OUT/STEP (default records/study/STEP: examples.jsonl, the token-stats sidecar, results):
# commit that folder after a stretch and a step continues on a new machine where it stopped.
#   bash benchmarks/study.sh rm-smollm     # full RM-Bench (798 prompts), SmolLM2-135M, contrasts none+prompt
#   CONTRAST=none bash benchmarks/study.sh rm-smollm   # the plain pass only (half the time), into rm-smollm-plain
#   bash benchmarks/study.sh rm-qwen       # RM-Bench chat+safety, Qwen2.5-Coder-0.5B, seeded prefix
#   CONTRAST=none bash benchmarks/study.sh rm-qwen     # the plain pass only, into rm-qwen05-plain
#   bash benchmarks/study.sh dsp-smollm    # DSP 4x4 + no system, SmolLM2-135M, contrasts none+prompt+system
#   CONTRAST=none,system LIMIT=20 bash benchmarks/study.sh dsp-smollm   # without the prompt contrast (dsp-smollm-system)
#   LIMIT=40 bash benchmarks/study.sh dsp-qwen   # DSP, Qwen2.5-Coder-0.5B, contrasts none+system, seeded prefix
#   bash benchmarks/study.sh variants STEP # re-aggregate STEP's kept stats under every variant (no model)
#   SIZE=1.5b CONTRAST=none LIMIT=129 bash benchmarks/study.sh rm-qwen  # the 1.5B, 129 chat + 129 safety, into rm-qwen15-plain
#   MODEL=qwen2.5-coder-0.5b-instruct LIMIT=40 bash benchmarks/study.sh judges  # the three LLM judges, chat+safety
#   bash benchmarks/study.sh scaling   # one table + figure against model size (no model; endorm eval --scaling)
#   LIMIT=40 bash benchmarks/study.sh scaling   # the same with every row on the seeded 40 + 40, into records/scaling-40
#   OUT=runs/study bash benchmarks/study.sh records STEP  # copy STEP's results.json / variants.json into records/study/STEP/
set -euo pipefail
OUT=${OUT:-records/study}
THREADS=${THREADS:-2}
GAMMAS=1,0.99,0.97,0.95,0.93,0.9,0.85,0.8
E="endorm eval --threads $THREADS --seed 0 --items-per-batch 1 --resume --aggregation all --gamma $GAMMAS"
DSP="$E --benchmark dsp --method endorm,logprob-mean --dsp-systems academy,business,entertainment,literature,none"
case "${1:-}" in
  rm-smollm) contrast=${CONTRAST:-none,prompt}; dir=rm-smollm; [[ $contrast == none ]] && dir=rm-smollm-plain
             $E --benchmark rm-bench --method endorm,logprob-mean --contrast "$contrast" --limit 441 \
               --output-dir "$OUT/$dir" ;;
  rm-qwen)   size=${SIZE:-0.5b}; contrast=${CONTRAST:-none,prompt}; dir=rm-qwen${size//[.b]/}
             [[ $contrast == none ]] && dir=$dir-plain
             $E --benchmark rm-bench --domains chat,safety --method endorm,logprob-mean --contrast "$contrast" \
               --model "qwen2.5-coder-$size-instruct" --limit "${LIMIT:-441}" --output-dir "$OUT/$dir" ;;
  judges)    model=${MODEL:-smollm2-135m-instruct}
             $E --benchmark rm-bench --domains chat,safety --method genrm-pointwise,verifier,genrm-pairwise \
               --model "$model" --limit "${LIMIT:-441}" --output-dir "$OUT/judges-$model" ;;
  scaling)   runs=${RUNS:-$OUT/rm-smollm-plain,$OUT/rm-qwen05-plain,$OUT/rm-qwen15-plain,$OUT/judges-smollm2-135m-instruct,$OUT/judges-qwen2.5-coder-0.5b-instruct,$OUT/judges-qwen2.5-coder-1.5b-instruct}
             out=records/scaling${LIMIT:+-$LIMIT}   # LIMIT=k: every row on the same seeded k + k prompts
             endorm eval --scaling "$runs" --limit "${LIMIT:-441}" --seed 0 --output-dir "$out"
             if [[ -z ${LIMIT:-} ]]; then mkdir -p docs/figures && mv "$out/scaling.png" docs/figures/scaling.png; fi ;;
  records)   step=$2; mkdir -p "records/study/$step"
             [[ $OUT/$step -ef records/study/$step ]] && { ls -l "records/study/$step"; exit 0; }
             for f in results.json variants.json; do
               [[ -f $OUT/$step/$f ]] && cp "$OUT/$step/$f" "records/study/$step/$f"
             done; ls -l "records/study/$step" ;;
  dsp-smollm) contrast=${CONTRAST:-none,prompt,system}; dir=dsp-smollm
             [[ $contrast == none,system ]] && dir=dsp-smollm-system
             $DSP --contrast "$contrast" --limit "${LIMIT:-661}" --output-dir "$OUT/$dir" ;;
  dsp-qwen)  $DSP --contrast none,system --limit "${LIMIT:-661}" --model qwen2.5-coder-0.5b-instruct \
               --output-dir "$OUT/dsp-qwen05-system" ;;
  variants)  step=$2; contrast=none,prompt; [[ $step == dsp-* ]] && contrast=none,prompt,system
             [[ $step == *-plain ]] && contrast=none; [[ $step == *-system ]] && contrast=none,system
             endorm eval --reaggregate "$OUT/$step" --aggregation all --gamma $GAMMAS --contrast $contrast ;;
  *) echo "usage: $0 rm-smollm|rm-qwen|dsp-smollm|dsp-qwen|judges|scaling|variants STEP|records STEP" >&2; exit 2 ;;
esac
