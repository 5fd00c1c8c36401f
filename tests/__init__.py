"""whygpu test suite (a package, so that modules can share tests/_support.py)."""
