"""What an Exchange needs of its client connection: the seam between proxy and server."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

if TYPE_CHECKING:
    from router.dataplane.proxy import Exchange


@mypyc_attr(allow_interpreted_subclasses=True)  # a test drives an Exchange with a 20-line stand-in
class ClientSide:
    """The client end of an Exchange (dataplane.server.ClientConnection).

    A compiled base class, not a typing Protocol: compiled, the Exchange then calls its client
    through the vtable (about 300 instructions less per call than a method looked up by name, and
    it calls five a request)."""

    loop: asyncio.AbstractEventLoop

    @property
    def draining(self) -> bool:
        raise NotImplementedError

    def set_deadline(self, seconds: float, what: str) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def exchange_done(self, ex: Exchange, *, keep_alive: bool) -> None:
        raise NotImplementedError
