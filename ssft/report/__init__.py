"""Reports: what each stage writes to MLflow beyond its metrics (tables, plots, summaries)
and the comparison of methods. The top layer of the library: it may import everything
below and nothing imports it except ``workflows/``.
"""
