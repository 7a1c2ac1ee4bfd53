"""Launching surge locally: real server processes for `make up` and for the tests."""
