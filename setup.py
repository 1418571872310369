"""setuptools shim; metadata lives in setup.cfg.

``twisted.plugins`` is listed explicitly (and has no ``__init__.py`` here)
so that a non-editable install drops ``securews_plugin.py`` into Twisted's
shared plugin namespace, where ``twistd`` finds it.
"""

from setuptools import setup

setup()
