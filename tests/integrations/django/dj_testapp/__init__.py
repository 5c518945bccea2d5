"""A tiny Django app for the backend tests: a model whose field default counts its calls."""
