"""Evaluation: sampling every tag, the metrics (Pass@1, Cons@k, pass@k, per-tag
diagnostics), the Pass@1 tag selection, and the evaluation of a trained model.

Imports ``ssft.method``, ``ssft.data`` and the low-level modules; never training or reports.
"""
