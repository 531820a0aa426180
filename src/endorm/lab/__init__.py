"""endorm lab: an exact, CPU-sized laboratory for the theory of arXiv 2506.23235.

Token MDPs small enough for exact dynamic programming (``mdp``), softmax "language models" fitted by
maximum likelihood or perturbed by hand (``fit``), the endogenous reward read from their logits with
``endorm.rewards``, and four experiments (``experiments``) checking Proposition 1, Theorems 1-2 and the
extract-then-RL fixed point. Run ``endorm lab`` (``endorm.lab.cli``); results are in docs/THEORY.md.
"""
