"""The project's own evaluation set, built from Debian's Python documentation (issue 11)."""
