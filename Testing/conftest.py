"""Fixtures shared by several test files."""

import locale

import pytest


@pytest.fixture
def ascii_locale():
    """The process's text encoding set to ASCII (the C/POSIX locale of many servers and containers)."""
    previous = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    yield
    locale.setlocale(locale.LC_CTYPE, previous)
