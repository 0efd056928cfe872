"""`make screenshot`: the README's picture of the web dashboard, made from a real run so it stays true.

In a temporary folder: a Valkey of its own; a tiny model trained on three simulated sessions (so the
predictor writes predictions and signals); two hours of simulated market recorded as fast as it goes;
then the system live at market speed with the dashboard, and headless Chromium (Debian's package)
taking the picture once the page has followed the market for a while. Nothing outside the temporary
folder is touched but the PNG.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("TICKVAULT_CHROMIUM", "/usr/bin/chromium")
MARKET_S = 2 * 3600  # market recorded before the picture (seconds of exchange time)


def tiny_model(path: Path) -> None:
    import tickvault.ml.model as model_module
    from tickvault.analytics.features import FeatureConfig
    from tickvault.domain.events import B3_TZ
    from tickvault.sources.simulator import MarketSimulator

    model_module.ITERATIONS = 60  # seconds, not minutes: the picture needs signals, not an edge
    sim = MarketSimulator(["WDOFUT"], seed=21, start=datetime(2025, 11, 3, 9, 0, tzinfo=B3_TZ))
    ticks, days = [], set()
    for t in itertools.islice(sim.ticks(), 0, None, 8):
        days.add(t.timestamp.date())
        if len(days) > 3:
            break
        ticks.append(t)
    data = model_module.training_set(
        ticks, "WDOFUT", horizon_ms=60_000, tick_size=0.5, config=FeatureConfig(emit_interval_ms=5_000)
    )
    trained, _ = model_module.train(data, "WDOFUT", horizon_ms=60_000, tick_size=0.5)
    model_module.save(trained, path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--live-seconds", type=float, default=20.0, help="page following the market")
    args = parser.parse_args(argv)

    from playwright.sync_api import expect, sync_playwright

    from tickvault.app.system import System
    from tickvault.app.web.server import WebServer
    from tickvault.config import load_settings
    from tickvault.store.api import Store
    from tickvault.store.server import EmbeddedValkey, free_port

    with tempfile.TemporaryDirectory(prefix="tickvault-screenshot-") as tmp:
        folder = Path(tmp)
        server = EmbeddedValkey(folder / "valkey", port=free_port())
        info = server.ensure_running()
        try:
            print("training a tiny model ...", flush=True)
            tiny_model(folder / "model.pkl")
            ports = {name: free_port() for name in ("zmq_tick_port", "zmq_book_port", "zmq_history_port",
                                                    "zmq_signal_port", "zmq_replay_port")}  # fmt: skip
            common = dict(valkey_url=f"{info.url}/0", data_dir=folder / "data",
                          model_path=folder / "model.pkl", signal_threshold=0.45, **ports)  # fmt: skip
            print("recording two hours of simulated market ...", flush=True)
            fast = System(load_settings(speed=0, **common))
            fast.start()
            store = Store(fast.connection.client("count"))  # type: ignore[union-attr]
            first_ms: int | None = None
            while not fast.stop_event.wait(0.5):  # until two hours of exchange time are stored
                last = store.last_tick("WDOFUT")
                if last is not None:
                    first_ms = last.timestamp_ms if first_ms is None else first_ms
                    if last.timestamp_ms - first_ms >= MARKET_S * 1000:
                        break
            fast.stop()
            print("live, with the dashboard ...", flush=True)
            live = System(load_settings(speed=1, **common))
            live.start()
            assert live.connection is not None
            web = WebServer(Store(live.connection.client("web")), symbols=live.settings.symbols, port=0,
                            where=live.connection.where)  # fmt: skip
            web.start()
            try:
                with sync_playwright() as driver:
                    # --lang: the date-time input in 24-hour form, as B3's traders read it
                    chromium = driver.chromium.launch(
                        executable_path=CHROMIUM, headless=True, args=["--lang=en-GB"]
                    )
                    try:
                        page = chromium.new_page(viewport={"width": 1600, "height": 1000}, locale="en-GB",
                                                 timezone_id="America/Sao_Paulo")  # fmt: skip
                        page.goto(web.url)
                        expect(page.get_by_test_id("status")).to_have_text("LIVE", timeout=30_000)
                        time.sleep(
                            args.live_seconds
                        )  # the picture shows the page after it followed the market
                        args.output.parent.mkdir(parents=True, exist_ok=True)
                        page.screenshot(path=str(args.output), full_page=True)
                    finally:
                        chromium.close()
            finally:
                web.stop()
                live.stop()
        finally:
            server.stop()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
