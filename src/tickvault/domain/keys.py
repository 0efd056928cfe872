"""Every Valkey key and ZeroMQ topic name, in one place.

Standalone keys are the original guide's (`stream:ticks:WDOFUT`). In cluster mode the symbol is wrapped
in a hash tag (`stream:ticks:{WDOFUT}`) so all keys of one symbol live in one slot and one pipeline or
script can touch them together. Symbols are validated by `events.validate_symbol`, so they never
contain braces, spaces or newlines that could inject another key or topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tickvault.errors import ConfigError

# tickvault's own bookkeeping lives under this prefix, apart from the user-facing streams.
META_PREFIX = "tv"
_NAMESPACE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def validate_namespace(name: str) -> str:
    """A namespace's name goes into every key: letters, digits, `-` and `_` only (no `:`, braces or
    glob characters that would let it reach or match another namespace's keys)."""
    if not _NAMESPACE.fullmatch(name):
        raise ConfigError(
            "TICKVAULT_NAMESPACE", name, "must be 1-64 letters, digits, '-' or '_' (e.g. replay-1)"
        )
    return name


@dataclass(frozen=True)
class KeySpace:
    """`namespace`: every key gets `ns:{NAME}:` in front (a replay's or backtest's output, apart from
    the live data; the `{SYMBOL}` hash tag stays, so a symbol's keys still share one slot)."""

    cluster: bool = False
    namespace: str = ""

    def __post_init__(self) -> None:
        if self.namespace:
            validate_namespace(self.namespace)

    @property
    def prefix(self) -> str:
        return f"ns:{self.namespace}:" if self.namespace else ""

    def live(self) -> KeySpace:
        """The live data's keys (what a replay reads)."""
        return KeySpace(cluster=self.cluster)

    def _sym(self, symbol: str) -> str:
        return f"{{{symbol}}}" if self.cluster else symbol

    def ticks(self, symbol: str) -> str:
        return f"{self.prefix}stream:ticks:{self._sym(symbol)}"

    def candles(self, tf: str, symbol: str) -> str:
        return f"{self.prefix}stream:candles:{tf}:{self._sym(symbol)}"

    def features(self, symbol: str) -> str:
        return f"{self.prefix}stream:features:{self._sym(symbol)}"

    def signals(self, symbol: str) -> str:
        return f"{self.prefix}stream:signals:{self._sym(symbol)}"

    def predictions(self, symbol: str) -> str:
        return f"{self.prefix}stream:predictions:{self._sym(symbol)}"

    def stream(self, kind: str, symbol: str) -> str:
        """Key of `kind` in ticks|features|signals|predictions|candles:TF."""
        if kind.startswith("candles:"):
            return self.candles(kind.split(":", 1)[1], symbol)
        return f"{self.prefix}stream:{kind}:{self._sym(symbol)}"

    def seen(self, symbol: str, session: str, chunk: int) -> str:
        """Bitmap of trade ids already stored for one session (idempotent writes)."""
        return f"{self.prefix}{META_PREFIX}:seen:{self._sym(symbol)}:{session}:{chunk}"

    def session_patterns(self, symbol: str) -> tuple[str, str]:
        """SCAN patterns of the per-session keys of a symbol (session: 4th part after the prefix)."""
        seen, edits = self.seen(symbol, "*", 0), self.seen_edits(symbol, "*")
        return seen.removesuffix(":*:0") + ":*", edits

    def seen_edits(self, symbol: str, session: str) -> str:
        """Set of trade edits already stored for one session."""
        return f"{self.prefix}{META_PREFIX}:edits:{self._sym(symbol)}:{session}"

    def late(self, symbol: str) -> str:
        """Sorted set: exchange time (score) -> stream id, for ticks stored out of time order."""
        return f"{self.prefix}{META_PREFIX}:late:{self._sym(symbol)}"

    def live_copy(self, symbol: str) -> str:
        """Stream of columnar copies of the live stream's batches (see store/live_copy.py)."""
        return f"{self.prefix}{META_PREFIX}:livecopy:{self._sym(symbol)}"

    def block(self, symbol: str, block_id: str) -> str:
        """One compressed history block (see store/sealing.py)."""
        return f"{self.prefix}{META_PREFIX}:block:{self._sym(symbol)}:{block_id}"

    def block_index(self, symbol: str) -> str:
        """Sorted set of a symbol's history blocks, scored by their newest exchange time."""
        return f"{self.prefix}{META_PREFIX}:blocks:{self._sym(symbol)}"

    def symbols(self) -> str:
        """Set of every symbol that has stored ticks."""
        return f"{self.prefix}{META_PREFIX}:symbols"

    def candle_lease(self, symbol: str) -> str:
        """Which candle worker owns this symbol now (in the symbol's slot: checked inside its writes)."""
        return f"{self.prefix}{META_PREFIX}:candlelease:{self._sym(symbol)}"

    def health(self, component: str) -> str:
        """Hash of a running component's counters (expires when it stops reporting; "*" to SCAN)."""
        return f"{self.prefix}{META_PREFIX}:health:{component}"

    def writer_lease(self, symbol: str) -> str:
        """Who writes this symbol's tick stream now (one writer at a time, see store/tick_writer.py)."""
        return f"{self.prefix}{META_PREFIX}:writer:{self._sym(symbol)}"

    def candle_position(self, symbol: str) -> str:
        """Last tick stream id the candle worker folded into bars (saved with the bars it wrote)."""
        return f"{self.prefix}{META_PREFIX}:candlepos:{self._sym(symbol)}"

    def feature_lease(self, symbol: str) -> str:
        """Which feature worker owns this symbol now (see workers/feature_worker.py)."""
        return f"{self.prefix}{META_PREFIX}:featureworker:{self._sym(symbol)}"

    def predictor_lease(self, symbol: str) -> str:
        """Which predictor worker owns this symbol now (see workers/predictor_worker.py)."""
        return f"{self.prefix}{META_PREFIX}:predictor:{self._sym(symbol)}"

    def day_summary(self, symbol: str, session: str) -> str:
        """One past session's summary for the history-aware features ("-": no session that day)."""
        return f"{self.prefix}{META_PREFIX}:daysum:{self._sym(symbol)}:{session}"

    def durability_probe(self) -> str:
        """Prefix of the counters written before WAITAOF, one per node in a cluster (Store.wait_durable)."""
        return f"{self.prefix}{META_PREFIX}:symbols:durability-probe"

    # -- the order book (store/book_writer.py, store/book_sealing.py; README "Data in Valkey")

    def book(self, symbol: str) -> str:
        """Live book stream: one entry per written batch of updates, packed columns (book_codec)."""
        return f"{self.prefix}stream:book:{self._sym(symbol)}"

    def book_seen(self, symbol: str, chunk: int) -> str:
        """Bitmap of the book update seqs stored (idempotent writes), 8M seqs per chunk."""
        return f"{self.prefix}{META_PREFIX}:bookseen:{self._sym(symbol)}:{chunk}"

    def book_position(self, symbol: str) -> str:
        """Hash: the book's kind and the highest frame, seq and time stored (where a restart resumes)."""
        return f"{self.prefix}{META_PREFIX}:bookpos:{self._sym(symbol)}"

    def book_files(self, symbol: str) -> str:
        """Hash: digest of an ingested book file -> the seq its first update of this symbol took
        (so ingesting the file again numbers it the same, and stores nothing twice)."""
        return f"{self.prefix}{META_PREFIX}:bookfiles:{self._sym(symbol)}"

    def book_late(self, symbol: str) -> str:
        """Sorted set: first exchange ms -> id of a live book entry stored after newer ones."""
        return f"{self.prefix}{META_PREFIX}:booklate:{self._sym(symbol)}"

    def book_snapshot(self, symbol: str, seq: int) -> str:
        """One periodic snapshot of the live book: the book after update `seq`, packed columns."""
        return f"{self.prefix}{META_PREFIX}:booksnap:{self._sym(symbol)}:{seq}"

    def book_snapshots(self, symbol: str) -> str:
        """Sorted set of the live snapshots by exchange time, member `ms:seq:valid:rows`."""
        return f"{self.prefix}{META_PREFIX}:booksnaps:{self._sym(symbol)}"

    def book_block(self, symbol: str, block_id: str) -> str:
        """One sealed book history block: a snapshot, then the updates after it (book_codec)."""
        return f"{self.prefix}{META_PREFIX}:bookblock:{self._sym(symbol)}:{block_id}"

    def book_blocks(self, symbol: str) -> str:
        """Sorted set of a symbol's book blocks by newest exchange time (see store/book_sealing.py)."""
        return f"{self.prefix}{META_PREFIX}:bookblocks:{self._sym(symbol)}"

    def book_writer_lease(self, symbol: str) -> str:
        """Who writes this symbol's book now (one writer at a time, see store/book_writer.py)."""
        return f"{self.prefix}{META_PREFIX}:bookwriter:{self._sym(symbol)}"

    def book_symbols(self) -> str:
        """Set of every symbol that has a stored book."""
        return f"{self.prefix}{META_PREFIX}:booksymbols"

    def dead_letters(self) -> str:
        """Stream of rejected messages, each with its reason."""
        return f"{self.prefix}{META_PREFIX}:deadletter"


def tick_topic(symbol: str) -> str:
    return f"tick_{symbol}"


def book_topic(symbol: str) -> str:
    """Book frames (`domain.book.BookFrame`) on ZMQ_BOOK_PORT."""
    return f"book_{symbol}"


def history_topic(symbol: str) -> str:
    """A history download's trades (ZMQ_HISTORY_PORT), the same JSON as `tick_{SYMBOL}`."""
    return f"history_{symbol}"


def features_topic(symbol: str) -> str:
    return f"features_{symbol}"


def signal_topic(symbol: str) -> str:
    return f"signal_{symbol}"
