"""Integration tests share the session's toy models (tests/conftest.py)."""
