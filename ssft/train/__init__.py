"""Training: the one loop for every method (``ssft.train.loop``), its set-up, the step plan
(which worker trains which questions), packing, optimizer and schedule, data/model
parallelism, checkpoints, and the matching statistics tracked while training.

Imports ``ssft.method``, ``ssft.data``, ``ssft.eval`` (the final model's tag selection) and the
low-level modules; never reports.
"""
