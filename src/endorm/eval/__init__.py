"""``endorm eval``: the reward-model experiments of arXiv 2506.23235 (RM-Bench, DSP, preference pairs,
best-of-N) for the endogenous reward and the baselines it is compared with, on one base model."""
