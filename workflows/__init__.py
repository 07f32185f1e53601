"""Ray entrypoints: thin wiring of the ``ssft`` library into Ray Tasks, Train, Tune and Data."""
