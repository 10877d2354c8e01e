"""Fake backends for the harness's own tests (importable once this directory is on sys.path)."""
