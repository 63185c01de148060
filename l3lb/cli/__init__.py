"""The command line: run, status, check."""
