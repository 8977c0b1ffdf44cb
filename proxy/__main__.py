"""``python -m proxy`` does what the ``vramgate`` console script does."""

from proxy.cli import main

raise SystemExit(main())
