"""Where training data comes from: trace sets (the Parquet schema), question sources,
teachers, grading, the selection of distinct correct traces, the build of trace sets, the
known-modes benchmark, teacher attribution, and tokenization into training questions.

Imports ``ssft.method`` (sequences, tags) and the low-level modules; never training,
evaluation or reports.
"""
