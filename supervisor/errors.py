"""Errors that reach API clients.

Each carries the HTTP status Docker uses for the same condition; its message is
exactly what the user sees, so it says what failed, on what, and what to do.
"""


class ApiError(Exception):
    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadParameter(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class MethodNotAllowed(ApiError):
    status = 405


class NotModified(ApiError):
    status = 304


class ServerError(ApiError):
    status = 500


def no_such_container(ref: str) -> NotFound:
    return NotFound(f"No such container: {ref}")
