"""Evaluation: sampling every tag, the metrics (Pass@1, Cons@k, pass@k, per-tag
diagnostics), the mode classifiers of benchmarks with known modes, the Pass@1 tag
selection, and the evaluation of a trained model.

Imports ``ssft.method``, ``ssft.data``, ``ssft.config`` and the low-level modules; never
training or reports.
"""
