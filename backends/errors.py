"""The one error type the example model server turns into a JSON answer."""

from __future__ import annotations


class ApiError(Exception):
    """A request that cannot be answered normally; `status` is the HTTP status to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)
