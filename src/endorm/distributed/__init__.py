"""Distributed scoring engines (``endorm score --engine ray``; needs the ``ray`` extra)."""
