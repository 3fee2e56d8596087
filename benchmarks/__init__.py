"""Benchmarks: one script per question, each printing a table and ratios measured in one run."""
