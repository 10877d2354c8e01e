"""The executable specification: one test module per area of the API, plus manifest.toml."""
