#!/usr/bin/env bash
# GRPO of Qwen2.5-Coder-0.5B-Instruct on GSM8K train, runs a/b/c of docs/RESULTS.md ("RL on a model that
# reasons"), and their evaluation. One heavy step at a time; each resumes (a CPU step takes minutes).
#   bash benchmarks/rl_qwen.sh probe RUN          # 3 steps into runs/probe_RUN: step time and peak memory
#   bash benchmarks/rl_qwen.sh train RUN          # 100 steps; resumes from runs/ or from the committed checkpoint
#   bash benchmarks/rl_qwen.sh save RUN           # copy the newest checkpoint, curves and completions into records/rl/
#   bash benchmarks/rl_qwen.sh eval RUN [BENCH]   # greedy after RL: gsm8k (200) or math500 (60); RUN=base: before
#   bash benchmarks/rl_qwen.sh compare            # before/after with Wilson intervals and McNemar tests
# RUN is the config's suffix: configs/qwen05_grpo_RUN.yaml (correctness = run b; endogenous = run a; gated = run
# c as pre-registered, which is run a on this model; hybrid = run c', the third run: RESULTS.md "Run c"). Before
# and after are greedy passes with the same flags and the bf16 sampler (the sampler rule of RESULTS.md), into
# records/rl/qwen05/eval-RUN-BENCHLIMIT/.
set -euo pipefail
MODEL=qwen2.5-coder-0.5b-instruct
REC=records/rl/qwen05
step=${1:-}
run=${2:-}
cfg=configs/qwen05_grpo_$run.yaml
out=runs/qwen05_grpo_$run

need_cfg() { [[ -f $cfg ]] || { echo "no config $cfg" >&2; exit 2; }; }

# the newest complete checkpoint of a folder, or nothing: endorm's own (tested) rule, which skips a checkpoint cut
# off mid-save (no trainer_state.json) and takes a missing folder as none
newest() { python -c 'import sys; from endorm.rl.trainer import last_checkpoint; print(last_checkpoint(sys.argv[1]) or "")' "$1"; }

case "$step" in
  probe)
    need_cfg
    rm -rf "runs/probe_$run"
    endorm train --config "$cfg" --max_steps 3 --save_steps 1000 --output_dir "runs/probe_$run"
    cat "runs/probe_$run/curves.csv" ;;  # elapsed_s and peak_rss_mb per step
  train)
    need_cfg
    saved=$(newest "$REC/$run")
    if [[ -n $saved && -z $(newest "$out") ]]; then  # a new machine: start from the committed checkpoint
      mkdir -p "$out"
      cp -r "$saved" "$out/"
      for f in curves.csv invocations.jsonl completions.jsonl; do [[ -f $REC/$run/$f ]] && cp "$REC/$run/$f" "$out/"; done
      echo "restored $saved into $out"
    fi
    endorm train --config "$cfg" --resume true ;;
  save)
    need_cfg
    ck=$(newest "$out")
    [[ -n $ck ]] || { echo "no complete checkpoint in $out" >&2; exit 1; }
    rm -rf "$REC/$run" && mkdir -p "$REC/$run"
    cp -r "$ck" "$REC/$run/"
    for f in curves.csv invocations.jsonl completions.jsonl; do if [[ -f $out/$f ]]; then cp "$out/$f" "$REC/$run/"; fi; done
    if [[ -d $out/final ]]; then cp -r "$out/final" "$REC/$run/"; fi
    # the tokenizer files are the base model's (22 MB); an adapter without them loads the base's tokenizer
    find "$REC/$run" \( -name tokenizer.json -o -name tokenizer_config.json -o -name chat_template.jinja \) -delete
    du -sh "$REC/$run" ;;
  eval)
    bench=${3:-gsm8k}
    case "$bench" in gsm8k) limit=200 ;; math500) limit=60 ;; *) echo "bench: gsm8k | math500" >&2; exit 2 ;; esac
    if [[ $run == base ]]; then
      policy=$MODEL
    else
      policy=$out/final
      [[ -d $policy ]] || policy=$REC/$run/final
      [[ -d $policy ]] || { echo "no trained policy for $run (train it first)" >&2; exit 1; }
    fi
    # one set of flags for before and after (as benchmarks/bestofn.sh greedy, bf16 sampler), so the test is paired
    endorm math-eval --models "$policy" --benchmarks "$bench" --limit $limit --seed 0 --prompt_template boxed \
      --sampler bf16 --engine continuous --num_threads 2 --resume --max_new_tokens 768 --temperature 0 \
      --batch_size 32 --output_dir "$REC/eval-$run-$bench$limit" ;;
  compare)
    for bench in gsm8k math500; do
      case "$bench" in gsm8k) limit=200 ;; math500) limit=60 ;; esac
      before=$REC/eval-base-$bench$limit/$MODEL/$bench.jsonl
      [[ -f $before ]] || { echo "skip $bench: no base-model pass $before (eval base $bench)" >&2; continue; }
      after=()
      for d in "$REC"/eval-*-"$bench$limit"/final; do
        [[ -f $d/$bench.jsonl ]] || continue
        r=${d#"$REC"/eval-}; r=${r%-"$bench$limit"/final}
        after+=("$r=$d/$bench.jsonl")
      done
      [[ ${#after[@]} -gt 0 ]] || { echo "skip $bench: no evaluated run" >&2; continue; }
      python benchmarks/rl_gsm8k.py compare --before "$before" --after "${after[@]}" --json "$REC/compare_$bench.json"
    done ;;
  *) sed -n 2,10p "$0" >&2; exit 2 ;;
esac
