"""
The built-in applications (``server.app``): ``echo``.

They are loaded by name (see :func:`securews.wire.apps.load_app`), so the
wire layer never imports this package.
"""
