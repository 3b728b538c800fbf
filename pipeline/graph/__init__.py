"""The doit task graph: declared (tasks.py) and cached as data for no-op runs (cache.py)."""
