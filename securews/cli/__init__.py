"""
The ``securews`` command: check a configuration, start one, mint a test
token, talk to a server, say what is installed.  ``twistd securews`` stays
the way to run the server; nothing in the library imports this package.
"""

from securews.cli._main import main

__all__ = ["main"]
