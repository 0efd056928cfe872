"""Web dashboard: the server's CPU at 10,000 ticks/s with 5 live pages, beside a naive per-tick push.

A writer process stores 10,000 ticks/s into a Valkey of the benchmark's own (each stamped with the
wall clock, so a page's lag is the newest trade it shows against the time it arrives), and a candle
worker (`run --only candles`) writes the candle streams as in a running system. Five plain HTTP
streaming readers, each in its own process, follow the server's Server-Sent Events as five open pages
would. Measured over the same window for both servers, each in its own process: its CPU (utime +
stime from /proc), the updates and bytes each page receives, and how far behind the store a page is.
`tickvault web` (the real command) reads the stream once for every page and sends each page at most
four coalesced updates a second; the baseline, the obvious first version, sends every tick to every
page as its own event. Then, where Chromium is installed: the same server with five real Chromium pages
open (its CPU, the updates each page draws, how far each screen is behind the store, how late a timer
fires in the page), and the page load on loopback with the market still at 10,000 ticks/s, the page
now against the page before it came with its first view (`BASELINE_REV`, served from a `git archive`
of that commit), both served at once and loaded in turn."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RATE = 10_000  # ticks/s
CLIENTS = 5
WARM_S = 4.0
MEASURE_S = 12.0
SYMBOL = "WDOFUT"
HERE = Path(__file__).resolve()


# -- the writer: RATE ticks/s, stamped with the wall clock -----------------------------------------


def writer(url: str, seconds: float, first_id: int) -> None:
    import valkey

    from tickvault.domain.events import make_tick
    from tickvault.store.api import Store

    # one writer name in every phase: the next phase's writer takes the stream's lease over at once
    store = Store(valkey.Valkey.from_url(url), writer_name="bench-writer")
    batch, trade_id = RATE // 100, first_id  # a batch every 10 ms
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        now_ms = int(time.time() * 1000)
        ticks = []
        for _ in range(batch):
            trade_id += 1
            ticks.append(make_tick(SYMBOL, now_ms, trade_id, 5400.0 + 0.5 * (trade_id % 11), 1 + trade_id % 4,
                                   multiplier=10.0, trade_type=2 + trade_id % 2, seq=trade_id))  # fmt: skip
        store.append_ticks(ticks)
        sent += batch
        ahead = started + sent / RATE - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)  # pacing the load, not synchronising a test


# -- the baseline: every tick to every page ----------------------------------------------------------


def naive_server(url: str, port: int) -> None:
    """An SSE endpoint per page that XREADs the stream and pushes each tick as one JSON event."""
    import asyncio

    import uvicorn
    import valkey.asyncio as avalkey
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def live(request: Any) -> StreamingResponse:
        client = avalkey.Valkey.from_url(url)

        async def stream() -> Any:
            last = "$"
            try:
                while True:
                    found = await client.xread({f"stream:ticks:{SYMBOL}": last}, block=1000, count=5000)
                    for _, entries in found or []:
                        for entry_id, fields in entries:
                            last = entry_id
                            tick = {k.decode(): v.decode() for k, v in fields.items()}
                            yield b"data: " + json.dumps(tick).encode() + b"\n\n"
                    await asyncio.sleep(0)
            finally:
                await client.aclose()

        return StreamingResponse(stream(), media_type="text/event-stream")

    uvicorn.run(
        Starlette(routes=[Route("/api/live", live)]), host="127.0.0.1", port=port, log_level="warning"
    )


# -- measuring ------------------------------------------------------------------------------------------


def reader(port: int, path: str, start: float, end: float) -> None:
    """One page, in a process of its own (five readers in one process would measure the GIL): counts
    events and bytes between the wall-clock times `start` and `end`, samples how old the newest trade
    it got is, and prints the result as one JSON line."""
    events = size = 0
    lags: list[float] = []
    sampled = 0.0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        stream = conn.getresponse()
        while time.time() < end:
            line = stream.fp.readline()
            if not line:
                break
            now = time.time()
            if not line.startswith(b"data: ") or now < start:
                continue
            events += 1
            size += len(line)
            if now - sampled >= 0.05:  # the lag sampled 20 times a second: the reader must keep up
                sampled = now
                newest = _newest_ms(json.loads(line[6:]))
                if newest is not None:
                    lags.append(now * 1000 - newest)
    except OSError:
        pass
    finally:
        conn.close()
    print(json.dumps({"events": events, "bytes": size, "lags": lags}))


def _newest_ms(message: dict[str, Any]) -> int | None:
    if "timestamp_ms" in message:  # the baseline's per-tick event
        return int(message["timestamp_ms"])
    tape = message.get("tape")
    return int(tape[0]["ms"]) if tape else None


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not listen")


class Phase:
    """A server process and the writer's load for one measurement; everything ends with the phase."""

    count = 0

    def __init__(self, server: list[str], env: dict[str, str], port: int, seconds: float) -> None:
        Phase.count += 1
        first_id = Phase.count * 100_000_000  # trade ids never repeat across phases
        self.port = port
        self.server = subprocess.Popen(server, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.load = subprocess.Popen([sys.executable, str(HERE), "--writer", env["VALKEY_URL"], str(seconds),
                                      str(first_id)], env=env)  # fmt: skip

    def __enter__(self) -> Phase:
        wait_listening(self.port, self.server)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in (self.load, self.server):
            proc.terminate()
            proc.wait(30)


def measure(name: str, server: list[str], env: dict[str, str], port: int, path: str) -> dict[str, Any]:
    with Phase(server, env, port, WARM_S + MEASURE_S + 2) as phase:
        start = time.time() + WARM_S
        readers = [
            subprocess.Popen(
                [sys.executable, str(HERE), "--reader", str(port), path, str(start), str(start + MEASURE_S)],
                env=env,
                stdout=subprocess.PIPE,
            )  # fmt: skip
            for _ in range(CLIENTS)
        ]
        time.sleep(max(0.0, start - time.time()))
        cpu0, wall0 = cpu_s(phase.server.pid), time.monotonic()
        time.sleep(MEASURE_S)
        cpu = (cpu_s(phase.server.pid) - cpu0) / (time.monotonic() - wall0)
        results = [json.loads(r.communicate(timeout=MEASURE_S + 60)[0]) for r in readers]
    lags = np.array([lag for r in results for lag in r["lags"]] or [np.nan])
    out = {
        "cpu": cpu,
        "events_per_s": sum(r["events"] for r in results) / CLIENTS / MEASURE_S,
        "kib_per_s": sum(r["bytes"] for r in results) / CLIENTS / MEASURE_S / 1024,
        "lag_p50": float(np.percentile(lags, 50)),
        "lag_p99": float(np.percentile(lags, 99)),
    }
    print(f"  {name}: server CPU {out['cpu'] * 100:,.0f}% of one core; per page {out['events_per_s']:,.1f}"
          f" updates/s, {out['kib_per_s']:,.0f} KiB/s; newest trade on the page {out['lag_p50']:,.0f} ms"
          f" behind the store (p50), {out['lag_p99']:,.0f} ms (p99)")  # fmt: skip
    return out


# in each page, every 50 ms: how old the newest trade on its screen is (the writer stamps each trade
# with the wall clock), and how late the timer fires (what a click would wait: is the page responsive)
SCREEN_JS = """() => {
  window.lags = [];
  window.delays = [];
  let due = performance.now() + 50;
  setInterval(() => {
    const now = performance.now();
    window.delays.push(Math.max(0, now - due));
    due = now + 50;
    const newest = window.tickvault.state.tape[0];
    if (newest) window.lags.push(Date.now() - newest.ms);
  }, 50);
}"""


def measure_browsers(env: dict[str, str]) -> dict[str, Any] | None:
    """`tickvault web` with CLIENTS Chromium pages open (each its own browser profile): the server's
    CPU, and in each page the updates drawn and how far the screen is behind the store."""
    chromium = os.environ.get("TICKVAULT_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).is_file():
        print(f"  {CLIENTS} Chromium pages: skipped (no Chromium at {chromium})")
        return None
    from playwright.sync_api import sync_playwright

    port = _free_port()
    with (
        Phase(tickvault_web(port), env, port, 3 * WARM_S + MEASURE_S + 30) as phase,
        sync_playwright() as driver,
    ):
        browser = driver.chromium.launch(executable_path=chromium, headless=True)
        try:
            pages = []
            for _ in range(CLIENTS):
                page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_function("() => (window.tickvault.state.updates || 0) > 0")  # live
                pages.append(page)
            time.sleep(WARM_S)
            for page in pages:
                page.evaluate(SCREEN_JS)
            updates0 = [page.evaluate("() => window.tickvault.state.updates") for page in pages]
            cpu0, wall0 = cpu_s(phase.server.pid), time.monotonic()
            time.sleep(MEASURE_S)
            wall = time.monotonic() - wall0
            cpu = (cpu_s(phase.server.pid) - cpu0) / wall
            updates = [
                page.evaluate("() => window.tickvault.state.updates") - u
                for page, u in zip(pages, updates0, strict=True)
            ]
            lags = np.array([lag for page in pages for lag in page.evaluate("() => window.lags")] or [np.nan])
            delays = np.array([d for page in pages for d in page.evaluate("() => window.delays")] or [np.nan])
        finally:
            browser.close()
    out = {
        "cpu": cpu, "updates_per_s": sum(updates) / CLIENTS / wall,
        "lag_p50": float(np.percentile(lags, 50)), "lag_p99": float(np.percentile(lags, 99)),
        "delay_p99": float(np.percentile(delays, 99)),
    }  # fmt: skip
    print(f"  tickvault web, {CLIENTS} Chromium pages open: server CPU {out['cpu'] * 100:,.0f}% of one core;"
          f" per page {out['updates_per_s']:,.1f} updates/s drawn; the newest trade on screen"
          f" {out['lag_p50']:,.0f} ms behind the store (p50, sampled every 50 ms), {out['lag_p99']:,.0f} ms"
          f" (p99); a 50 ms timer in the page fired late by {out['delay_p99']:,.0f} ms at p99")  # fmt: skip
    return out


# the page before its first view came with it: its script asked /api/meta, then /api/view, in series
BASELINE_REV = "fc77b7e0173931dda5b023fe0cc5a16bfa890016"
LOADS = 10  # per server and kind of load
# in the page, from the navigation's start: the frame that shows its data rendered (the script that
# set `data-loaded` has given the chart its data; the chart draws at the next animation frame, then
# the frame is painted), whatever the page's code
DRAWN_JS = """new MutationObserver(() => {
  if (!document.body || !document.body.dataset.loaded || window.drawing) return;
  window.drawing = true;
  requestAnimationFrame(() => setTimeout(() => { window.drawnAt = performance.now(); }, 0));
}).observe(document, { attributes: true, subtree: true, attributeFilter: ["data-loaded"] });"""
# its document's first and last byte, the document parsed (scripts run), the data drawn, its load
# event (when the browser stops showing it as loading), in ms
TIMINGS_JS = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  return [nav.responseStart, nav.responseEnd, nav.domContentLoadedEventEnd, window.drawnAt, nav.loadEventEnd,
          performance.timeOrigin];
}"""


def baseline_src(folder: Path) -> Path | None:
    """The baseline's source tree (`git archive`), or None outside a git checkout that has it."""
    done = subprocess.run(["git", "-C", str(HERE.parents[1]), "archive", "--format=tar", BASELINE_REV, "src"],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(folder)], input=done.stdout, check=True)
    return folder / "src"


def page_load(env: dict[str, str], tmp: Path) -> None:
    """Navigation to the chart drawn with data, with the market running at RATE: the page now and the
    baseline's, both served at once and loaded in turn (paired: the same moments of a busy machine).
    Each load is a first visit (a fresh browser profile), then a reload of that page."""
    chromium = os.environ.get("TICKVAULT_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).is_file():
        print(f"  page load: skipped (no Chromium at {chromium})")
        return
    from playwright.sync_api import Browser, Page, sync_playwright

    old_src = baseline_src(tmp)
    ports = {"now": _free_port()}
    envs = {"now": env}
    if old_src is not None:
        ports["baseline"] = _free_port()
        envs["baseline"] = {**env, "PYTHONPATH": str(old_src)}  # ahead of the editable install's path
    procs = {name: subprocess.Popen(tickvault_web(port), env=envs[name], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) for name, port in ports.items()}  # fmt: skip
    times: dict[tuple[str, str], list[float]] = {}  # (server, kind) -> ms in the page to the data drawn
    outside: dict[tuple[str, str], list[float]] = {}  # as the test driver sees it: goto to seen drawn
    parts: dict[str, list[list[float]]] = {name: [] for name in ports}

    def timed(name: str, kind: str, page: Page, navigate: Any) -> None:
        started, asked_at = time.perf_counter(), time.time() * 1000
        navigate()
        page.wait_for_function("() => window.drawnAt !== undefined && document.readyState === 'complete'")
        seen = (time.perf_counter() - started) * 1000
        outside.setdefault((name, kind), []).append(seen)
        timings = page.evaluate(TIMINGS_JS)
        times.setdefault((name, kind), []).append(timings[3])
        if kind == "first visit":  # when the navigation started after the driver asked; when it saw
            parts[name].append([*timings[:5], timings[5] - asked_at, seen])

    def load(browser: Browser, name: str) -> None:
        context = browser.new_context()
        try:
            context.add_init_script(DRAWN_JS)
            page = context.new_page()
            timed(name, "first visit", page, lambda: page.goto(f"http://127.0.0.1:{ports[name]}/"))
            timed(name, "reload", page, page.reload)
        finally:
            context.close()

    writer_proc = subprocess.Popen([sys.executable, str(HERE), "--writer", env["VALKEY_URL"], "600",
                                    str(900_000_000)], env=env)  # fmt: skip
    try:
        for name, proc in procs.items():
            wait_listening(ports[name], proc)
        with sync_playwright() as driver:
            time.sleep(WARM_S)  # the market has been running a while when someone opens the page
            browser = driver.chromium.launch(executable_path=chromium, headless=True)
            try:
                for i in range(LOADS):
                    for name in sorted(ports, reverse=i % 2 == 1):  # in turn, each one first half the time
                        load(browser, name)
            finally:
                browser.close()
    finally:
        for proc in (writer_proc, *procs.values()):
            proc.terminate()
            proc.wait(30)
    print(f"  page load at {RATE:,} ticks/s (Chromium, loopback; from the navigation's start to the chart"
          f" drawn with data, in the page; {LOADS} of each, in turn; target 1,000 ms):")  # fmt: skip
    for kind in ("first visit", "reload"):
        for name in ("baseline", "now"):
            if (name, kind) in times:
                got, seen = times[(name, kind)], outside[(name, kind)]
                label = "now" if name == "now" else f"baseline ({BASELINE_REV[:7]})"
                print(f"    {kind:<11} {label:<18} median {np.median(got):,.0f} ms, worst {max(got):,.0f} ms"
                      f" (as the test driver sees it: median {np.median(seen):,.0f} ms)")  # fmt: skip
    for name in ports:
        if parts[name]:
            first_byte, last_byte, parsed, drawn, loaded, asked, seen = np.median(
                np.array(parts[name]), axis=0
            )
            print(f"    {name} first visit, medians: the document's first byte {first_byte:,.0f} ms, its"
                  f" last {last_byte:,.0f} ms, parsed {parsed:,.0f} ms, drawn {drawn:,.0f} ms, load event"
                  f" {loaded:,.0f} ms; the navigation started {asked:,.0f} ms after the driver asked, which"
                  f" saw the page drawn {seen:,.0f} ms after asking")  # fmt: skip
    if "baseline" in ports:
        ratios = {
            (where, kind): np.median(got[("baseline", kind)]) / np.median(got[("now", kind)])
            for where, got in (("in the page", times), ("as the driver sees it", outside))
            for kind in ("first visit", "reload")
        }
        said = [
            f"{ratios[(where, 'first visit')]:,.2f}x faster on a first visit,"
            f" {ratios[(where, 'reload')]:,.2f}x on a reload ({where})"
            for where in ("in the page", "as the driver sees it")
        ]
        print("  ratio: page load " + "; ".join(said))
    else:
        print(f"  (the baseline {BASELINE_REV[:7]} is not in this checkout: no ratio)")


def tickvault_web(port: int) -> list[str]:
    return [sys.executable, "-m", "tickvault", "web", "--web-port", str(port)]


def _free_port() -> int:
    from tickvault.store.server import free_port

    return free_port()


def main(only: str = "") -> None:
    from tickvault.store.server import EmbeddedValkey

    with tempfile.TemporaryDirectory() as tmp:
        valkey_server = EmbeddedValkey(Path(tmp) / "valkey", port=_free_port())
        info = valkey_server.ensure_running()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VALKEY", "WEB_", "TICKVAULT_"))}
        env.update(VALKEY_URL=f"{info.url}/0", TICKVAULT_DATA_DIR=str(Path(tmp) / "data"),
                   MONITOR_SYMBOLS=SYMBOL, TICKVAULT_SYMBOLS=SYMBOL)  # fmt: skip
        # the system's candle worker, as `run` has one: the page's closed bars come from its streams
        candles = subprocess.Popen([sys.executable, "-m", "tickvault", "run", "--only", "candles"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            if only:  # `python bench/bench_web.py --page-load` or `--browsers`: that part alone
                page_load(env, Path(tmp)) if only == "--page-load" else measure_browsers(env)
                return
            print(f"  {RATE:,} ticks/s stored, {CLIENTS} pages following {SYMBOL}, {MEASURE_S:g} s measured")
            port = _free_port()
            mine = measure("tickvault web (aggregated, coalesced)", tickvault_web(port), env, port,
                           f"/api/live?symbol={SYMBOL}&tf=1m")  # fmt: skip
            port = _free_port()
            naive = measure("naive per-tick push", [sys.executable, str(HERE), "--naive", env["VALKEY_URL"],
                            str(port)], env, port, "/api/live")  # fmt: skip
            cpu_ratio = naive["cpu"] / max(mine["cpu"], 1e-9)
            sent_ratio = naive["kib_per_s"] / max(mine["kib_per_s"], 1e-9)
            print(f"  ratio: server CPU {cpu_ratio:,.1f}x lower, {sent_ratio:,.0f}x less sent to each page")
            measure_browsers(env)
            page_load(env, Path(tmp))
        finally:
            candles.terminate()
            candles.wait(60)
            valkey_server.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--writer"]:
        writer(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1:2] == ["--reader"]:
        reader(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    elif sys.argv[1:2] == ["--naive"]:
        naive_server(sys.argv[2], int(sys.argv[3]))
    else:
        sys.path.insert(0, str(HERE.parent))
        main(sys.argv[1] if sys.argv[1:2] in (["--page-load"], ["--browsers"]) else "")
