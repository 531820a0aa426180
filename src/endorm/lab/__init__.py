"""endorm lab: an exact, CPU-sized laboratory for the theory of arXiv 2506.23235.

Token MDPs small enough for exact dynamic programming (``mdp``), softmax "language models" fitted by
maximum likelihood or perturbed by hand (``fit``), the endogenous reward read from their logits with
``endorm.rewards``, and six experiments (``experiments``) checking Proposition 1, Theorems 1-2, the
extract-then-RL fixed point, the KL-regularised optimum of the endogenous reward (``pi_ref`` sharpened)
and what a discount gamma < 1 does to shaping invariance (variable-length responses: ``sequences``).
Run ``endorm lab`` (``endorm.lab.cli``); results are in docs/THEORY.md.
"""
