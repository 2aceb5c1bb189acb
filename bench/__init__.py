"""Side-by-side benchmarks, one script per stage (`python bench/<stage>.py`); `python -m bench` runs them all."""
