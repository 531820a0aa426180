#!/usr/bin/env bash
# Best-of-N on math with the model's own reward (docs/RESULTS.md, "Best-of-N on math"). Every step resumes
# (--resume): rerun it after an interruption, in this or a later session. Outputs (samples, scores, summaries)
# go to records/bestofn/ and are committed, so a later session resumes or checks them without resampling.
#   bash benchmarks/bestofn.sh greedy            # greedy pass at a 768-token cap (the baseline; sets the cap L)
#   bash benchmarks/bestofn.sh cap               # print L: the smallest multiple of 64 holding 90% of greedy
#   bash benchmarks/bestofn.sh sample            # N = 8 samples at T = 0.7 and cap L, every form, the summary
#   MODEL=smollm2-135m-instruct bash benchmarks/bestofn.sh greedy|sample     # other models / sets:
#   BENCH=math500 LIMIT=60 bash benchmarks/bestofn.sh greedy|sample
#   MODEL=qwen2.5-coder-1.5b-instruct LIMIT=50 bash benchmarks/bestofn.sh greedy|sample
#   SAMPLER=float32 bash benchmarks/bestofn.sh ...  # the reference sampler (default bf16, see below)
#   CAP=768 bash benchmarks/bestofn.sh sample       # a model whose greedy pass loops past 768 tokens (SmolLM2-135M)
#                                                   # has no L: sample at CAP anyway, and say so beside the figures
set -euo pipefail
MODEL=${MODEL:-qwen2.5-coder-0.5b-instruct}
BENCH=${BENCH:-gsm8k}
LIMIT=${LIMIT:-200}
THREADS=${THREADS:-2}
# The sampler rule (RESULTS.md): the fastest setting within 0.05 nats/token of float32. bfloat16 is 2.5x float32
# at 0.0002 nats/token on the 0.5B model (int8: 0.27-0.35); the 0.5B's greedy pass and first N = 8 problems
# were drawn in float32 before bf16 was measured (records without a "sampler" field are float32). Scoring is float32.
# On a CPU without AVX-512 BF16 bfloat16 is slower than float32 (records/sampling/speed_0.5b_avx2.json), so there
# the rule gives SAMPLER=float32 (SmolLM2-135M's greedy pass was drawn so; its N = 8 samples in bf16 on an
# AVX-512 BF16 CPU, 1.79x float32 at 0.0008 nats/token, records/sampling/speed_smollm2_bf16.json). Each record names its sampler.
SAMPLER=${SAMPLER:-bf16}
OUT=records/bestofn
# transformers' continuous batching refills a finished sequence's slot at once (same tokens as generate)
E="endorm math-eval --models $MODEL --benchmarks $BENCH --limit $LIMIT --seed 0 --prompt_template boxed \
   --sampler $SAMPLER --engine continuous --num_threads $THREADS --resume"
greedy_file=$OUT/greedy768-$BENCH$LIMIT/$MODEL/$BENCH.jsonl
cap() {
  python -c "import json,sys; from endorm.mathx.bestofn import length_cap
recs=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(length_cap(recs) or 'none')" "$greedy_file"
}
case "${1:-}" in
  greedy) $E --max_new_tokens 768 --temperature 0 --batch_size 32 --output_dir "$OUT/greedy768-$BENCH$LIMIT" ;;
  cap)    cap ;;
  sample) L=${CAP:-$(cap)}
          [[ $L == none ]] && { echo "the 768-token cap holds fewer than 90% of greedy solutions: CAP=N to sample at N" >&2; exit 1; }
          echo "cap L = $L tokens"
          # 4 problems (32 sequences) per continuous-batching call: 50-57 tokens/s in bf16, against 40 at 8
          # problems and ~22 at 16, whose paged cache grows the attention cost (records/sampling/engines_0.5b.json)
          $E --max_new_tokens "$L" --temperature 0.7 --num_samples 8 --batch_size 4 --select all \
             --greedy_from "$greedy_file" --output_dir "$OUT/n8-$BENCH$LIMIT" ;;
  *) echo "usage: $0 greedy|cap|sample" >&2; exit 2 ;;
esac
