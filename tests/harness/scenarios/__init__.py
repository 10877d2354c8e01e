"""Test modules run inside MPI jobs by the harness tests (not collected directly)."""
