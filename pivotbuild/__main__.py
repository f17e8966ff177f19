from __future__ import annotations

from pivotbuild.cli import main

raise SystemExit(main())
