"""The `assay` command line: thin commands over the Python API."""
