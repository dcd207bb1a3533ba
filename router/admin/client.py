"""The command line's side of the admin API: small, synchronous, with clear errors."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any


class AdminError(Exception):
    """The admin API could not be reached or refused the call; the message says which."""


class AdminClient:
    """Calls the router's admin listener. Address and token come from flags or the environment."""

    def __init__(self, address: str | None = None, token: str | None = None, timeout: float = 10.0) -> None:
        address = address or os.environ.get("ROUTER_ADMIN", "127.0.0.1:9901")
        self.base = address if address.startswith(("http://", "https://")) else f"http://{address}"
        self.base = self.base.rstrip("/")
        self.token = token if token is not None else os.environ.get("ROUTER_ADMIN_TOKEN")
        self.timeout = timeout

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        if not self.token:
            raise AdminError("no admin token: pass --token or set ROUTER_ADMIN_TOKEN")
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:  # reads too: the router may be set to require it (admin.read_token)
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise AdminError(self._explain(exc)) from None
        except urllib.error.URLError as exc:
            raise AdminError(f"cannot reach the router's admin API at {self.base}: {exc.reason} "
                             "(is the router running? set --admin or ROUTER_ADMIN)") from None
        except (TimeoutError, json.JSONDecodeError) as exc:
            raise AdminError(f"bad answer from {self.base}{path}: {exc}") from None

    @staticmethod
    def _explain(exc: urllib.error.HTTPError) -> str:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = None
        message = exc.reason
        if isinstance(body, dict):
            error = body.get("error")
            found = error.get("message") if isinstance(error, dict) else body.get("message")
            message = found if isinstance(found, str) else message
        return f"{exc.code}: {message}"
