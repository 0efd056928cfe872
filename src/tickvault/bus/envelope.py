"""The bus envelope: every bus message is `[topic, payload]`, payload a JSON object that may carry a
`seq`; heartbeats are `[hb.{topic}, {"seq": newest}]`. What publisher and subscriber both read.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from tickvault.errors import DataError

HEARTBEAT_PREFIX = b"hb."


class _SeqOnly(msgspec.Struct):
    seq: int = 0


_seq_decoder = msgspec.json.Decoder(_SeqOnly)


def seq_of(payload: bytes) -> int:
    """The `seq` of a JSON payload, 0 if it has none or is not JSON."""
    try:
        return _seq_decoder.decode(payload).seq
    except msgspec.MsgspecError:
        return 0


_any_decoder = msgspec.json.Decoder()


def heartbeat_seq(payload: bytes) -> int:
    """A heartbeat's newest `seq`; DataError (its `kind` the reason: `json`, `seq`, `negative`) if the
    payload is not a JSON object with a non-negative integer `seq`. A stranger may send anything."""
    try:
        body = _any_decoder.decode(payload)
    except msgspec.MsgspecError as exc:
        raise DataError("json", f"heartbeat payload is not JSON: {exc}") from None
    seq = body.get("seq") if isinstance(body, dict) else None
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise DataError("seq", f"heartbeat without an integer seq: {payload[:80]!r}")
    if seq < 0:
        raise DataError("negative", f"heartbeat seq {seq} is negative")
    return seq


def endpoint(host: str, port: int) -> str:
    return f"tcp://{host}:{port}"


def envelope_seqs(messages: Sequence[Sequence[bytes]]) -> list[int | None]:
    """The bus's own check, for a consumer without a schema: two frames, a JSON object payload with
    an integer `seq` (or none: 0). It cannot tell a valid tick from an invalid one: see `Subscriber`."""
    return [seq_of(m[1]) if len(m) == 2 else None for m in messages]


def is_heartbeat(frames: Sequence[bytes]) -> bool:
    return len(frames) == 2 and frames[0].startswith(HEARTBEAT_PREFIX)
