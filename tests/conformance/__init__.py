"""
RFC 6455/7692 conformance: the Autobahn Testsuite against ``twistd securews``.

``python -m pytest tests/conformance`` runs what CI runs;
``python -m tests.conformance --full`` is the release run (see __main__.py).
"""
