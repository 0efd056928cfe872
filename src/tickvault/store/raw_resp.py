"""Raw RESP on valkey-py connections: the two fast paths, behind one door.

The tick writer sends each batch as RESP bytes it encoded itself and reads the replies itself;
`stream_codec.raw_command` reads XRANGE replies as the C parser leaves them, without valkey-py's
response callbacks. Both reach under valkey-py's client API, so every valkey-py and libvalkey
internal they rely on is named here, and tests/test_raw_resp.py fails, naming it, if an upgrade
changes one:

- `libvalkey.pack_command(args)`: one command (a tuple of str/bytes) as RESP bytes, in C.
- `ConnectionPool.get_connection(command_name)` and `ConnectionPool.release(connection)`: a
  connection of a client's pool (`Valkey.connection_pool`) taken for our use alone, and given back.
- `Connection.send_packed_command([payload])`: bytes written as they are (in a list: bytes on their
  own would be iterated as ints).
- `Connection.send_command(*args)`: one command encoded and written, its reply left unread.
- `Connection.read_response(disable_decoding=True)`: the next reply as the parser gives it (bytes
  and lists, whatever the client's decode_responses; an error reply raised as valkey.ResponseError).
- `Connection.disconnect()`: the socket closed, and with it any replies not read.
- `valkey.connection.DefaultParser` is `_LibvalkeyParser` (libvalkey's C reader): both paths are
  fast only because of it (they still work on the pure-Python parser).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import libvalkey
import valkey

pack: Callable[[tuple[str | bytes, ...]], bytes] = libvalkey.pack_command

# A transaction framed by these gets no reply at all (replies are off until after EXEC) except the
# +OK of the closing CLIENT REPLY ON: Python reads one reply per batch instead of one per command.
REPLY_OFF_MULTI = pack(("CLIENT", "REPLY", "OFF")) + pack(("MULTI",))
EXEC_REPLY_ON = pack(("EXEC",)) + pack(("CLIENT", "REPLY", "ON"))


class RawConnection:
    """A connection of `client`'s pool, held for raw RESP until `release`: bytes in, raw replies out.
    `client` is a plain (one node) client; in a cluster, the node's (see `cluster.node_client`)."""

    def __init__(self, client: valkey.Valkey, command_name: str = "MULTI") -> None:
        self._pool = client.connection_pool
        self._conn = self._pool.get_connection(command_name)

    def send(self, payload: bytes) -> None:
        """Write RESP bytes (any number of commands) as they are."""
        self._conn.send_packed_command([payload])

    def send_command(self, *args: Any) -> None:
        self._conn.send_command(*args)

    def read(self) -> Any:
        """The next reply, undecoded and without response callbacks; an error reply is raised."""
        return self._conn.read_response(disable_decoding=True)

    def disconnect(self) -> None:
        """Close the socket: replies not read yet must not reach the connection's next user."""
        self._conn.disconnect()

    def release(self) -> None:
        """Give the connection back to its pool (it reconnects on next use if disconnected)."""
        self._pool.release(self._conn)
