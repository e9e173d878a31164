"""Reusable fake servers for the test suite: real HTTP servers on 127.0.0.1, each in its own thread.

* :class:`FakeEvolution` - the Evolution API (WhatsApp) REST surface the hub calls.
* :class:`FakeHive` - the Automagik Hive agent backend (``POST /process``).
* :class:`ServerThread` - run any ASGI app with uvicorn in a background thread.

Use them as context managers or with ``start()`` / ``stop()``; every one exposes ``.url``.
"""

from .evolution import FakeEvolution, FakeInstance, qr_data_uri
from .hive import FakeHive, default_reply
from .server import FakeServer, RecordedRequest, Response, ServerThread

__all__ = [
    "FakeEvolution",
    "FakeHive",
    "FakeInstance",
    "FakeServer",
    "RecordedRequest",
    "Response",
    "ServerThread",
    "default_reply",
    "qr_data_uri",
]
