"""valkey-py's exceptions as tickvault's, in one place (see errors.py for the tree).

    valkey.ConnectionError, valkey.TimeoutError  ->  StoreUnavailable("valkey unreachable: ...")
    any other valkey.ValkeyError                  ->  StoreError(the server's or client's message)

(valkey.AuthenticationError is a ConnectionError: a refused password is "unreachable", and its
message is the server's, which never repeats the password.) Anything else passes through untouched.

`map_valkey_errors()` is a context manager and, called, a decorator; the original error is the
mapped one's `__cause__`. `store_error` is the map itself, for an error held rather than raised
(a pipeline's per-command replies).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import valkey

from tickvault.errors import StoreError, StoreUnavailable

# the server, not the request: callers must never mistake these for an empty result
UNREACHABLE = (valkey.ConnectionError, valkey.TimeoutError)


def store_error(exc: valkey.ValkeyError) -> StoreError:
    """A valkey-py error as tickvault's: unreachable servers are StoreUnavailable, never "no data"."""
    if isinstance(exc, UNREACHABLE):
        return StoreUnavailable(f"valkey unreachable: {exc}")
    return StoreError(str(exc))


@contextlib.contextmanager
def map_valkey_errors() -> Iterator[None]:
    """Raise a valkey-py error from the block (or decorated function) as `store_error(exc)`."""
    try:
        yield
    except valkey.ValkeyError as exc:
        raise store_error(exc) from exc
