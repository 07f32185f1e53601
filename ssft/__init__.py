"""Set Supervised Fine-Tuning (SSFT) with global forking tokens.

The Ray-free library: forking tokens, trace-set schema, matching costs and assignment,
losses, batching, teachers, grading, metrics, tracking. It never imports Ray, so every part
runs under torchrun or in a notebook; ``workflows/`` wires it into Ray.
"""

__version__ = "0.1.0"
