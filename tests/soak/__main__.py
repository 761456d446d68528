"""``python -m tests.soak`` (run from the repository root)."""

from tests.soak.soak import main

raise SystemExit(main())
