"""Backend-agnostic conformance suite for MLX distributed communication."""
