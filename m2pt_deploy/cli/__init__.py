"""Command-line entry points. Thin: parse, call the Python API, print."""
