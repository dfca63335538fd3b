"""``python -m MRITRUSFusionLib`` is the ``mritrus-fusion`` command (used by the Slicer module's subprocess)."""

from .cli import main

raise SystemExit(main())
