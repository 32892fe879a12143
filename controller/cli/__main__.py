"""`python -m controller.cli` = the `kvmtimer` console script."""

from controller.cli import main

raise SystemExit(main())
