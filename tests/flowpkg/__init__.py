"""Flow modules used by the tests (importable as `tests.flowpkg.*`)."""
