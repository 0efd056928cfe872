from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env
from tickvault.config import Settings, load_settings
from tickvault.errors import ConfigError

# every variable of DESIGN.md (and tickvault's own) with a valid non-default value and what it sets
HONOURED = [
    ("ZMQ_TICK_PORT", "6555", "zmq_tick_port", 6555),
    ("ZMQ_BOOK_PORT", "6556", "zmq_book_port", 6556),
    ("ZMQ_HISTORY_PORT", "6557", "zmq_history_port", 6557),
    ("ZMQ_SIGNAL_PORT", "6558", "zmq_signal_port", 6558),
    ("ZMQ_REPLAY_PORT", "6559", "zmq_replay_port", 6559),
    ("ZMQ_BOOK_REPLAY_PORT", "6560", "zmq_book_replay_port", 6560),
    ("BOOK_ENABLED", "false", "book_enabled", False),
    ("ZMQ_HOST", "127.0.0.2", "zmq_host", "127.0.0.2"),
    ("VALKEY_HOST", "db.example", "valkey_host", "db.example"),
    ("VALKEY_PORT", "6380", "valkey_port", 6380),
    ("VALKEY_DB", "3", "valkey_db", 3),
    ("ZMQ_ENABLED", "false", "zmq_enabled", False),
    ("VALKEY_ENABLED", "0", "valkey_enabled", False),
    ("TIME_TRAVEL_ENABLED", "false", "time_travel_enabled", False),
    ("LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("LOG_FORMAT", "JSON", "log_format", "json"),
    ("MONITOR_SYMBOLS", "WINFUT, PETR4", "monitor_symbols", ("WINFUT", "PETR4")),
    ("VALKEY_URL", "valkey://10.1.1.1:7000/2", "valkey_url", "valkey://10.1.1.1:7000/2"),
    ("STREAM_MAX_LEN", "5000", "stream_max_len", 5000),
    ("STREAM_RETENTION_DAYS", "7", "stream_retention_days", 7),
    ("TICKVAULT_DATA_DIR", "/srv/tv", "data_dir", Path("/srv/tv")),
    ("TICKVAULT_SYMBOLS", "WDOZ26", "symbols", ("WDOZ26",)),
    ("TICKVAULT_SEED", "42", "seed", 42),
    ("TICKVAULT_SPEED", "60", "speed", 60.0),
    ("TICKVAULT_MODEL", "/srv/m.pkl", "model_path", Path("/srv/m.pkl")),
    ("SIGNAL_THRESHOLD", "0.7", "signal_threshold", 0.7),
    ("FEATURES_INTERVAL_MS", "250", "features_interval_ms", 250),
    ("PROFIT_DLL_PATH", "C:/Profit/ProfitDLL64.dll", "profit_dll_path", Path("C:/Profit/ProfitDLL64.dll")),
    ("PROFIT_USER", "trader@example.com", "profit_user", "trader@example.com"),
    ("PROFIT_BOOK", "Price", "profit_book", "price"),
    ("ZMQ_ALLOW_INSECURE", "true", "zmq_allow_insecure", True),
    ("ZMQ_CONSUME_ENABLED", "true", "zmq_consume_enabled", True),
    ("ZMQ_CURVE_SERVER_PUBLIC", "k/s.key", "zmq_curve_server_public", Path("k/s.key")),
    ("ZMQ_CURVE_CLIENT_SECRET", "k/c.key_secret", "zmq_curve_client_secret", Path("k/c.key_secret")),
    ("ZMQ_CURVE_CLIENTS", "k/clients", "zmq_curve_clients", Path("k/clients")),
    ("VALKEY_CA_CERT", "/etc/tv/ca.pem", "valkey_ca_cert", Path("/etc/tv/ca.pem")),
    ("TICKVAULT_ONLY", "recorder", "only", "recorder"),
    ("TICKVAULT_NAMESPACE", "replay-1", "namespace", "replay-1"),
    ("TICKVAULT_METRICS_PORT", "9108", "metrics_port", 9108),
    ("WEB_ENABLED", "false", "web_enabled", False),
    ("WEB_HOST", "0.0.0.0", "web_host", "0.0.0.0"),
    ("WEB_PORT", "8060", "web_port", 8060),
]


def test_every_setting_is_covered_here() -> None:
    aliases = {str(f.validation_alias) for f in Settings.model_fields.values()}
    assert aliases - {name for name, *_ in HONOURED} == {
        "VALKEY_PASSWORD",
        "PROFIT_PASSWORD",
        "PROFIT_KEY",
        "ZMQ_CURVE_SERVER_SECRET",
        "WEB_TOKEN",
    }


@pytest.mark.parametrize(("env", "value", "attr", "expected"), HONOURED)
def test_each_environment_variable_is_honoured(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, attr: str, expected: object
) -> None:
    monkeypatch.setenv(env, value)
    assert getattr(load_settings(), attr) == expected


def test_password_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VALKEY_PASSWORD", "hunter2")
    settings = load_settings()
    assert settings.valkey_password is not None
    assert settings.valkey_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)


def test_dotenv_file_is_read_and_environment_beats_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("ZMQ_TICK_PORT=7001\nZMQ_BOOK_PORT=7002\n")
    monkeypatch.setenv("ZMQ_BOOK_PORT", "7003")
    settings = load_settings()
    assert (settings.zmq_tick_port, settings.zmq_book_port) == (7001, 7003)


def test_flag_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZMQ_TICK_PORT", "7001")
    assert load_settings(zmq_tick_port=7005).zmq_tick_port == 7005
    assert load_settings(zmq_tick_port=None).zmq_tick_port == 7001


def test_embedded_is_default_and_explicit_host_means_external(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().embedded
    assert load_settings().valkey_url == "embedded"
    monkeypatch.setenv("VALKEY_HOST", "10.0.0.5")
    assert not load_settings().embedded
    assert load_settings().external_url == "valkey://10.0.0.5:6379/0"
    monkeypatch.setenv("VALKEY_URL", "embedded")
    assert load_settings().embedded


@pytest.mark.parametrize(
    ("env", "value", "words"),
    [
        ("VALKEY_PORT", "abc", "valid integer"),
        ("ZMQ_TICK_PORT", "70000", "less than or equal"),
        ("VALKEY_DB", "-1", "greater than or equal"),
        ("ZMQ_ENABLED", "maybe", "valid boolean"),
        ("LOG_LEVEL", "LOUD", "DEBUG"),
        ("VALKEY_URL", "http://x", "valkey://"),
        ("TICKVAULT_SYMBOLS", "WDO FUT", "must match"),
        ("MONITOR_SYMBOLS", ",", "at least one symbol"),
        ("TICKVAULT_SPEED", "-1", "greater than or equal"),
        ("WEB_PORT", "http", "valid integer"),
        ("WEB_PORT", "65536", "less than or equal"),
        ("WEB_ENABLED", "perhaps", "valid boolean"),
        ("PROFIT_BOOK", "mbp", "'offer', 'price' or 'none'"),
    ],
)
def test_bad_value_names_the_variable_and_value(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, words: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.name == env
    assert str(err.value).startswith(f"{env}={value!r}")
    assert words in str(err.value)


def test_bad_flag_value_is_named_like_its_variable() -> None:
    with pytest.raises(ConfigError, match="^VALKEY_PORT='x'"):
        load_settings(valkey_port="x")


def test_cli_with_bad_env_value_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tickvault", "query", "WDOFUT", "--start", "-1h"],
        env=subprocess_env({"VALKEY_PORT": "abc"}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "VALKEY_PORT='abc'" in lines[0]


def test_env_example_lists_every_setting() -> None:
    example = Path(__file__).resolve().parents[1] / ".env.example"
    names = {
        line.lstrip("# ").split("=", 1)[0]
        for line in example.read_text().splitlines()
        if "=" in line and line.lstrip("# ").split("=", 1)[0].isupper()
    }
    assert names == {str(f.validation_alias) for f in Settings.model_fields.values()}


SECRET = "s3cr3t-Pa55-XYZ"


def test_a_password_never_appears_in_errors(tmp_path: Path, valkey_url: str) -> None:
    cases = [
        {"VALKEY_URL": f"http://:{SECRET}@db.example:6379/0"},  # an invalid URL with a password in it
        {"VALKEY_URL": valkey_url.replace("://", f"://:{SECRET}@")},  # a server that has no password
        {"VALKEY_URL": valkey_url, "VALKEY_PASSWORD": SECRET, "LOG_LEVEL": "DEBUG"},
    ]
    for env in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "tickvault", "query", "WDOFUT", "--start", "-1h", "--format", "csv"],
            env=subprocess_env(env),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0, env
        assert SECRET not in proc.stdout + proc.stderr, env
        assert "Traceback" not in proc.stderr
    from tickvault.config import redact

    assert redact("VALKEY_URL", f"valkeys://user:{SECRET}@h:1/0") == "valkeys://user:***@h:1/0"
    assert redact("VALKEY_PASSWORD", SECRET) == "***"
