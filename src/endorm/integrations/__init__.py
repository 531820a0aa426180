"""Adapters that plug the endogenous reward into other libraries (TRL)."""
