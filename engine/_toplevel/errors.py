"""vecz's typed errors (`vecz.errors`), each rooted in `VeczError` and also inheriting the
builtin it refines (``except ValueError`` keeps working for callers that do not know vecz).

Defined in `vecz.engine.errors` and `vecz.formats.errors` (imports flow engine -> formats);
this module is the public place to import them from.
"""

from __future__ import annotations

from .engine.errors import *  # noqa: F401,F403
from .engine.errors import __all__  # noqa: F401
