"""The lowest layer: what every other package may use (cache paths and locks, hardware facts, run-dir files)."""
