"""httpx, without its command-line client.

httpx imports its command-line client (with rich and pygments: 4 MB in each worker, which has click from
uvicorn already) whenever click, rich and pygments are installed, as they are with this service's CLI,
and the service never runs it. A None entry in sys.modules makes that import fail, which httpx expects:
it then puts a stub in its place. Once httpx has been imported (by a test, say), the entry changes
nothing.
"""

import sys

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx  # noqa: E402

__all__ = ["httpx"]
