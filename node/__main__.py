"""`python -m node` = `kvmtimer node`."""

from node.process.main import main

raise SystemExit(main())
