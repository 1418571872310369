"""``python -m securews.cli``: the ``securews`` command."""

from securews.cli._main import main

raise SystemExit(main())
