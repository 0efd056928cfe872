"""Settings: the only place that reads the environment.

Names are the original guide's (`ZMQ_TICK_PORT`, `VALKEY_HOST`, ...) plus tickvault's own. Each setting
comes from, highest priority first: a CLI flag, the environment, a `.env` file, the default. A bad
value raises ConfigError naming the variable and the value it got.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tickvault.domain.events import validate_symbol
from tickvault.domain.keys import validate_namespace
from tickvault.errors import ConfigError, DataError

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Only = Literal["source", "recorder", "candles", "features", "predictor"]  # `run --only`: one component
ProfitBook = Literal["offer", "price", "none"]  # ProfitDLL's book: by order (MBO), by level (MBP), none
DEFAULT_SYMBOLS = ("WDOFUT", "WINFUT")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    # ZeroMQ (the guide's ports); bound on loopback unless ZMQ_HOST says otherwise.
    zmq_enabled: bool = Field(True, validation_alias="ZMQ_ENABLED")
    zmq_host: str = Field("127.0.0.1", validation_alias="ZMQ_HOST")
    zmq_tick_port: int = Field(5555, ge=1, le=65535, validation_alias="ZMQ_TICK_PORT")
    # the order book's frames (book_{SYMBOL}) and their own replay endpoint; `tickvault download`
    # publishes history_{SYMBOL} on the history port (5557)
    zmq_book_port: int = Field(5556, ge=1, le=65535, validation_alias="ZMQ_BOOK_PORT")
    zmq_book_replay_port: int = Field(5560, ge=1, le=65535, validation_alias="ZMQ_BOOK_REPLAY_PORT")
    zmq_history_port: int = Field(5557, ge=1, le=65535, validation_alias="ZMQ_HISTORY_PORT")
    zmq_signal_port: int = Field(5558, ge=1, le=65535, validation_alias="ZMQ_SIGNAL_PORT")
    # tickvault's addition: where a subscriber asks the publisher for messages it missed
    # CURVE for a bus beyond loopback (ZeroMQ certificate files, see `tickvault curve-keys`)
    zmq_curve_server_secret: Path | None = Field(None, validation_alias="ZMQ_CURVE_SERVER_SECRET")
    zmq_curve_server_public: Path | None = Field(None, validation_alias="ZMQ_CURVE_SERVER_PUBLIC")
    zmq_curve_client_secret: Path | None = Field(None, validation_alias="ZMQ_CURVE_CLIENT_SECRET")
    # a folder of client public keys (*.key): only those clients may connect (ZAP); unset: any client
    zmq_curve_clients: Path | None = Field(None, validation_alias="ZMQ_CURVE_CLIENTS")
    zmq_allow_insecure: bool = Field(False, validation_alias="ZMQ_ALLOW_INSECURE")
    # the guide's zmq_consume_enabled: the core flow reads ticks from the bus instead of in-process
    zmq_consume_enabled: bool = Field(False, validation_alias="ZMQ_CONSUME_ENABLED")
    zmq_replay_port: int = Field(5559, ge=1, le=65535, validation_alias="ZMQ_REPLAY_PORT")
    # the simulator's order book (MBO), published, recorded and fed to the features; off: ticks only
    book_enabled: bool = Field(True, validation_alias="BOOK_ENABLED")

    # Valkey: VALKEY_URL wins; else an explicit VALKEY_HOST/VALKEY_PORT means that server; else embedded.
    valkey_enabled: bool = Field(True, validation_alias="VALKEY_ENABLED")
    valkey_url: str = Field("embedded", validation_alias="VALKEY_URL")
    valkey_host: str = Field("127.0.0.1", validation_alias="VALKEY_HOST")
    valkey_port: int = Field(6379, ge=1, le=65535, validation_alias="VALKEY_PORT")
    valkey_password: SecretStr | None = Field(None, validation_alias="VALKEY_PASSWORD")
    valkey_db: int = Field(0, ge=0, le=15, validation_alias="VALKEY_DB")
    # valkeys:// verifies the server certificate (always); against this CA file instead of the system's
    valkey_ca_cert: Path | None = Field(None, validation_alias="VALKEY_CA_CERT")

    stream_max_len: int = Field(1_000_000, ge=0, validation_alias="STREAM_MAX_LEN")
    stream_retention_days: int = Field(30, ge=0, validation_alias="STREAM_RETENTION_DAYS")
    # off: the history-aware features are None and no previous session is read (see features.py)
    time_travel_enabled: bool = Field(True, validation_alias="TIME_TRAVEL_ENABLED")
    log_level: LogLevel = Field("INFO", validation_alias="LOG_LEVEL")
    # text: for people; json: one object per line for log shippers (both: one line per event)
    log_format: Literal["text", "json"] = Field("text", validation_alias="LOG_FORMAT")
    monitor_symbols: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_SYMBOLS, validation_alias="MONITOR_SYMBOLS"
    )

    # the web dashboard (`run`, `web`): loopback unless WEB_TOKEN is set (see app/web/server.py)
    web_enabled: bool = Field(True, validation_alias="WEB_ENABLED")
    web_host: str = Field("127.0.0.1", min_length=1, validation_alias="WEB_HOST")
    web_port: int = Field(8050, ge=0, le=65535, validation_alias="WEB_PORT")  # 0: any free port
    web_token: SecretStr | None = Field(None, validation_alias="WEB_TOKEN")

    # tickvault's own
    data_dir: Path = Field(Path("data"), validation_alias="TICKVAULT_DATA_DIR")
    symbols: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_SYMBOLS, validation_alias="TICKVAULT_SYMBOLS"
    )
    seed: int = Field(7, validation_alias="TICKVAULT_SEED")
    speed: float = Field(1.0, ge=0, validation_alias="TICKVAULT_SPEED")
    # ProfitDLL (run --source profitdll)
    profit_dll_path: Path = Field(Path("ProfitDLL.dll"), validation_alias="PROFIT_DLL_PATH")
    profit_user: str | None = Field(None, validation_alias="PROFIT_USER")
    profit_password: SecretStr | None = Field(None, validation_alias="PROFIT_PASSWORD")
    profit_key: SecretStr | None = Field(None, validation_alias="PROFIT_KEY")
    # which of its books, with BOOK_ENABLED: every order (offer), the lighter price levels, or none
    profit_book: ProfitBook = Field("offer", validation_alias="PROFIT_BOOK")
    # features and the live predictor
    model_path: Path | None = Field(None, validation_alias="TICKVAULT_MODEL")  # None: DATA_DIR/model
    signal_threshold: float = Field(0.55, gt=0, le=1, validation_alias="SIGNAL_THRESHOLD")
    features_interval_ms: int = Field(1000, ge=0, validation_alias="FEATURES_INTERVAL_MS")
    # `tickvault run`: one component per process (unset: the whole system), Prometheus on 127.0.0.1
    only: Only | None = Field(None, validation_alias="TICKVAULT_ONLY")
    metrics_port: int | None = Field(None, ge=0, le=65535, validation_alias="TICKVAULT_METRICS_PORT")
    # a replay's or backtest's output apart from the live data: every key gets `ns:{NAME}:` in front
    namespace: str = Field("", validation_alias="TICKVAULT_NAMESPACE")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", "profit_book", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("symbols", "monitor_symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not value:
            raise ValueError("at least one symbol is required")
        out = []
        for symbol in value:
            try:
                out.append(validate_symbol(symbol))
            except DataError as exc:
                raise ValueError(exc.reason) from None
        return tuple(out)

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if value:
            try:
                validate_namespace(value)
            except ConfigError as exc:
                raise ValueError(exc.reason) from None
        return value

    @field_validator("valkey_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value != "embedded" and not value.startswith(
            ("valkey://", "valkeys://", "redis://", "rediss://", "unix://", "valkey+cluster://",
             "valkeys+cluster://", "redis+cluster://", "rediss+cluster://")
        ):  # fmt: skip
            raise ValueError(
                "must be 'embedded' or a valkey://, valkeys://, redis://, rediss://, unix:// or"
                " valkey+cluster://host:port,host:port,... URL"
            )
        return value

    @property
    def model_file(self) -> Path:
        return self.model_path or self.data_dir / "model" / "model.pkl"

    @property
    def valkey_data_dir(self) -> Path:
        return self.data_dir / "valkey"

    @property
    def embedded(self) -> bool:
        """True when tickvault runs (or finds) its own bundled Valkey server."""
        explicit = self.model_fields_set
        if "valkey_url" in explicit:
            return self.valkey_url == "embedded"
        return not ({"valkey_host", "valkey_port"} & explicit)

    @property
    def external_url(self) -> str:
        """The URL of a non-embedded server, built from VALKEY_HOST/PORT/DB when VALKEY_URL is not set."""
        if self.valkey_url != "embedded":
            return self.valkey_url
        return f"valkey://{self.valkey_host}:{self.valkey_port}/{self.valkey_db}"


def _env_name(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, str):
        return alias
    return field.upper()


def load_settings(**overrides: Any) -> Settings:
    """Settings from flags (`overrides`, None means 'not given'), environment and `.env`."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        # pydantic reports the alias when the value came from the environment, the name from a flag
        name = field if field.isupper() else _env_name(field)
        reason = err["msg"].removeprefix("Value error, ")
        raise ConfigError(name, redact(name, err.get("input")), reason) from None


_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")


def redact(name: str, value: Any) -> Any:
    """A setting's value fit for an error message or a log line: no password, ever."""
    if ("PASSWORD" in name or "TOKEN" in name or name.endswith("_KEY")) and value not in (None, ""):
        return "***"
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    return value
