"""TEST ONLY: a hostile ServerApp for secagg's Flower tests (see app.py)."""
