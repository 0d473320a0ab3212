"""Benchmarks of Flask-AAA against its peers (``python3 run.py bench``; see RESULTS.md)."""
