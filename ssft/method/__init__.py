"""The method, as the paper's Section 3 reads: forking tokens and the sequences they start,
per-token log-probabilities (and the prompt cache), the matching cost and the assignment
policies, the loss on the matched sequences, and the table of training methods
(``ssft.method.table``) from which every list of methods is derived.

Imports only downward: ``ssft.method`` uses the low-level modules (``ssft.models``,
``ssft.atomic_io``) and nothing else of ``ssft``.
"""
