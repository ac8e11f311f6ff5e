#!/usr/bin/env python3
"""A real browser against a real gateway: the dashboard's checks from issue 17.

Starts the gateway binary twice (access control off, then on), drives Debian's Chromium
with Playwright, talks gRPC to the same gateway with stubs generated from proto/, and
checks:
  1. the page loads with no console errors (and none through the whole run);
  2. sending events makes the ingest view move;
  3. the top ads table equals the TopAds RPC;
  4. the queue view's numbers equal QueueControl.GetStats;
  5. an ad titled <img src=x onerror=alert(1)> shows as text and runs nothing;
  6. an agent dry run shows its preview, and confirming runs it;
  7. with auth on, no key -> no data; a client key -> no operator views; an operator key
     -> the queue;
and writes the README's screenshot (docs/dashboard.png).

Without /usr/bin/chromium, Playwright or grpcio it says it was skipped and exits 0.
Usage: dashboard_test.py [--gateway target/debug/adflow-gateway] [--screenshot docs/dashboard.png]
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
CHROMIUM = os.environ.get("ADFLOW_CHROMIUM", "/usr/bin/chromium")
XSS = "<img src=x onerror=alert(1)>"
RESULTS = []


def skip(why):
    print(f"dashboard browser test SKIPPED: {why}")
    sys.exit(0)


def check(name, ok, detail=""):
    RESULTS.append((name, bool(ok)))
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + str(detail) if detail and not ok else ''}", flush=True)
    return ok


def wait_until(what, fn, timeout=20.0, every=0.25):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # the page or the gateway is not there yet
            last = e
        time.sleep(every)
    raise TimeoutError(f"{what}: still {last!r} after {timeout} s")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stubs(tmp):
    out = Path(tmp) / "stubs"
    out.mkdir()
    protos = sorted(str(p) for p in (ROOT / "proto" / "adflow" / "v1").glob("*.proto"))
    from grpc_tools import protoc
    import grpc_tools

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", *protos])
    if rc != 0:
        raise RuntimeError("protoc failed")
    sys.path.insert(0, str(out))


class Gateway:
    def __init__(self, binary, tmp, name, auth_keys=None):
        self.dir = Path(tmp) / name
        self.dir.mkdir()
        self.grpc_port, self.http_port = free_port(), free_port()
        cfg = [
            "[server]", f'listen = "127.0.0.1:{self.grpc_port}"',
            "[storage.file]", f'dir = "{self.dir / "events"}"',
            "[storage.resilience]", f'spill_dir = "{self.dir / "spill"}"',
            "[queue]", f'path = "{self.dir / "queue.redb"}"',
            "[workers]", "in_process = 0",
            "[metrics]", 'listen = ""',
            "[dashboard]", f'listen = "127.0.0.1:{self.http_port}"', "poll_seconds = 1",
        ]
        if auth_keys:
            cfg += ["[auth]", "enabled = true", "keys = ["]
            for kname, role, key in auth_keys:
                h = hashlib.sha256(key.encode()).hexdigest()
                cfg.append(f'  {{ name = "{kname}", role = "{role}", sha256 = "{h}" }},')
            cfg.append("]")
        (self.dir / "gw.toml").write_text("\n".join(cfg) + "\n")
        self.log = open(self.dir / "gateway.log", "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADFLOW_")}
        self.proc = subprocess.Popen([binary, "--config", str(self.dir / "gw.toml")], cwd=self.dir,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.http_port}/"
        wait_until("the dashboard answering", lambda: http_json("GET", self.url + "api/session")[0] == 200)
        import grpc

        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")

    def stop(self):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def http_json(method, url, body=None, key=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    if body is not None:
        req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def md(key):
    return [("authorization", f"Bearer {key}")] if key else []


def seed(gw, key=None):
    """Ads in every partition (one with a hostile title) and events for eight ads."""
    from adflow.v1 import ads_pb2, ads_pb2_grpc, common_pb2, ingest_pb2, ingest_pb2_grpc

    ads = ads_pb2_grpc.AdServiceStub(gw.channel)
    specs = [ads_pb2.AdSpec(title=XSS, game_family="Puzzle", priority=4, description="<b>bold?</b>",
                            call_to_action="<script>alert(2)</script>")]
    families = ["RPG-Fantasy", "Puzzle", "Racing"]
    for i in range(30):
        specs.append(ads_pb2.AdSpec(title=f"Ad number {i}", game_family=families[i % 3], priority=1 + i % 5,
                                    target_audience=["18-34"], call_to_action="Play now", duration_seconds=15))
    r = ads.SubmitAds(ads_pb2.SubmitAdsRequest(ads=specs), metadata=md(key))
    assert r.accepted == len(specs), r
    xss_id = r.results[0].accepted.id
    send_events(gw, 0, 400, key)
    return xss_id


def send_events(gw, start, n, key=None):
    from adflow.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc

    ingest = ingest_pb2_grpc.EventIngestStub(gw.channel)
    now = int(time.time() * 1000) - 1000
    events = []
    for i in range(start, start + n):
        kind = [1, 1, 1, 1, 2, 2, 3][i % 7]  # impressions, clicks, conversions
        ad = f"ad-{(i * 7) % 8}"
        e = common_pb2.AdEvent(event_id=f"ev-{i}", type=kind, ad_id=ad, campaign_id=f"cmp-{i % 3}",
                               game_id="g-1", game_family="Puzzle", user_id=f"u-{i % 50}", timestamp_ms=now,
                               country="US", device="phone", platform=2)
        if kind == 3:
            e.revenue_usd = 1.5 + (i % 4)
        events.append(e)
    # One invalid event (no ad id) so the rejects table has a reason.
    events.append(common_pb2.AdEvent(event_id=f"bad-{start}", type=1, timestamp_ms=now))
    r = ingest.SendEvents(ingest_pb2.SendEventsRequest(events=events), metadata=md(key))
    assert r.accepted == n and r.rejected == 1, r


def grpc_stats(gw, key=None):
    from adflow.v1 import queue_pb2, queue_pb2_grpc

    return queue_pb2_grpc.QueueControlStub(gw.channel).GetStats(queue_pb2.GetStatsRequest(), metadata=md(key))


def value(page, id_):
    return page.get_attribute(f"#{id_}", "data-value")


def open_page(browser, url, errors, dialogs):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(url)
    return page


def open_scenario(browser, binary, tmp, shot):
    from adflow.v1 import analytics_pb2, analytics_pb2_grpc

    gw = Gateway(binary, tmp, "open")
    errors, dialogs = [], []
    try:
        xss_id = seed(gw)
        page = open_page(browser, gw.url + "#ingest", errors, dialogs)
        wait_until("ingest totals", lambda: value(page, "in-total-accepted") not in (None, ""))
        check("page loads with no console errors", not errors, errors)

        # 2. Sending events moves the ingest view.
        before = int(value(page, "in-total-accepted"))
        send_events(gw, 10_000, 300)
        wait_until("accepted total to grow by 300", lambda: int(value(page, "in-total-accepted")) >= before + 300)
        # The highest accepted rate charted over the last ten minutes (the card shows
        # only the latest interval, which may already be past the burst).
        rate = wait_until("a non-zero accepted rate", lambda: float(page.get_attribute("#in-rate-chart", "data-max")
                                                                    or 0))
        reasons = page.inner_text("#in-rejects")
        check("sending events moves the ingest view",
              rate > 0 and "missing field" in reasons and page.locator("#in-rate-chart path").count() > 0,
              (rate, reasons))

        # 3. Top ads equal TopAds.
        page.goto(gw.url + "#ads")
        page.wait_for_selector("#view-ads:not([hidden]) #top-table tbody tr td:nth-child(2)")
        top = analytics_pb2_grpc.AnalyticsStub(gw.channel).TopAds(analytics_pb2.TopAdsRequest(
            metric=analytics_pb2.METRIC_IMPRESSIONS, limit=51,
            period=analytics_pb2.Period(window=analytics_pb2.WINDOW_LAST_HOUR)))
        expect = [[s.id, f"{s.counts.impressions:,}", f"{s.counts.clicks:,}", f"{s.counts.conversions:,}",
                   f"${s.revenue_usd:.2f}"] for s in top.ads[:50]]
        rows = page.eval_on_selector_all("#top-table tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
        seen = [[r[1], r[2], r[3], r[4], r[7]] for r in rows]
        check("top ads equal the TopAds RPC", seen == expect and len(expect) == 8, (seen, expect))
        page.click("#top-table tbody tr:first-child")
        page.wait_for_selector("#ad-stats:not([hidden]) #ad-chart-series svg path")
        check("an ad's stats show a chart per window",
              page.locator("#ad-stats-windows tbody tr").count() == 3 and page.locator("#ad-chart-ctr rect").count() >= 3)

        # 4. Queue numbers equal GetStats (no workers run: the queue holds still).
        page.goto(gw.url + "#queue")
        page.wait_for_selector("#view-queue:not([hidden]) #q-partitions tbody tr td:nth-child(2)")
        time.sleep(1.5)  # one more poll after the rpc below would not change a still queue
        s = grpc_stats(gw)
        fields = ["total_queued", "in_flight", "dead_letters", "completed_total", "completed_last_minute", "workers"]
        got = {f: int(float(value(page, "q-" + f))) for f in fields}
        want = {f: int(getattr(s, f)) for f in fields}
        parts = page.eval_on_selector_all("#q-partitions tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
        got_parts = {int(r[0][1:]): (int(r[1].replace(",", "")), r[2] == "PAUSED") for r in parts}
        want_parts = {p.priority: (p.queued, p.paused) for p in s.partitions}
        oldest = abs(int(float(value(page, "q-oldest_wait_ms"))) - s.oldest_wait_ms)
        check("the queue view's numbers equal QueueControl.GetStats",
              got == want and got_parts == want_parts and want["total_queued"] == 31 and oldest < 5000,
              (got, want, got_parts, want_parts, oldest))

        # 5. A hostile title is text.
        cell = page.locator("#q-ads tbody td", has_text=XSS)
        wait_until("the hostile ad listed", lambda: cell.count() == 1)
        cell.click()
        page.wait_for_selector("#ad-detail:not([hidden])")
        wait_until("its detail", lambda: page.text_content("#ad-title") == XSS)
        dd = page.eval_on_selector_all("#ad-fields dd", "ds => ds.map(d => d.textContent)")
        time.sleep(0.5)
        check("an ad titled <img src=x onerror=alert(1)> shows as text and runs nothing",
              page.locator("img").count() == 0 and page.locator("main script, main b").count() == 0
              and not dialogs and xss_id in dd and "<script>alert(2)</script>" in dd,
              (dialogs, page.locator("img").count()))

        # 6. The agent: preview, then confirm.
        page.goto(gw.url + "#console")
        page.fill("#cmd-text", "pause priority 2")
        page.click("#cmd-preview")
        wait_until("the preview", lambda: value(page, "cmd-outcome") == "OUTCOME_DRY_RUN")
        paused_before = {p.priority: p.paused for p in grpc_stats(gw).partitions}[2]
        preview_ok = ("pause priority 2" in page.text_content("#cmd-understood")
                      and "confirmation" in page.text_content("#cmd-reason")
                      and page.is_visible("#cmd-confirm") and not paused_before)
        check("an agent dry run shows its preview and changes nothing", preview_ok,
              (page.text_content("#cmd-understood"), page.text_content("#cmd-reason"), paused_before))
        page.click("#cmd-confirm")
        wait_until("the confirmation", lambda: value(page, "cmd-outcome") == "OUTCOME_EXECUTED")
        paused_after = {p.priority: p.paused for p in grpc_stats(gw).partitions}[2]
        wait_until("the audit log", lambda: "pause priority 2" in page.inner_text("#audit"))
        check("confirming the preview executes it", paused_after, paused_after)

        # Workers through the agent too, so the screenshot shows a queue at work.
        page.fill("#cmd-text", "scale to 2 workers")
        page.click("#cmd-preview")
        wait_until("the scale preview", lambda: value(page, "cmd-outcome") == "OUTCOME_DRY_RUN")
        page.click("#cmd-confirm")
        wait_until("the scale run", lambda: value(page, "cmd-outcome") == "OUTCOME_EXECUTED")
        page.goto(gw.url + "#queue")
        wait_until("ads completed", lambda: int(float(value(page, "q-completed_total") or 0)) >= 20, timeout=30)
        page.select_option("#ads-status", "AD_STATUS_COMPLETED")
        page.fill("#ad-id", xss_id)
        page.click("#ad-form button")
        wait_until("the analysis", lambda: "score" in page.text_content("#ad-analysis-summary"), timeout=30)
        time.sleep(2)
        if shot:
            Path(shot).parent.mkdir(parents=True, exist_ok=True)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=shot)
            print(f"screenshot written to {shot}")
        check("no console errors and no dialogs through the whole run", not errors and not dialogs,
              (errors, dialogs))
        page.close()
    finally:
        gw.stop()


def auth_scenario(browser, binary, tmp):
    keys = [("game", "client", "client-secret-1"), ("ops", "operator", "operator-secret-1")]
    gw = Gateway(binary, tmp, "auth", auth_keys=keys)
    errors, dialogs = [], []
    try:
        seed(gw, key="operator-secret-1")
        page = open_page(browser, gw.url + "#queue", errors, dialogs)
        page.wait_for_selector("#login:not([hidden])")
        time.sleep(1.5)
        hidden = page.eval_on_selector_all(".view", "vs => vs.every(v => v.hidden)")
        status, body = http_json("POST", gw.url + "api/adflow.v1.QueueControl/GetStats", {})
        check("auth on, no key: the page asks for one and shows no data",
              hidden and page.is_hidden("#nav") and value(page, "q-total_queued") is None
              and value(page, "in-total-accepted") is None and status == 401 and "total_queued" not in body,
              (hidden, status, body))

        page.fill("#key", "client-secret-1")
        page.click("#login-form button")
        page.wait_for_selector("#view-ingest:not([hidden])")
        wait_until("client ingest data", lambda: value(page, "in-total-accepted") not in (None, ""))
        page.goto(gw.url + "#queue")
        time.sleep(1.5)
        status, body = http_json("POST", gw.url + "api/adflow.v1.QueueControl/GetStats", {}, key="client-secret-1")
        check("auth on, client key: analytics yes, operator views no",
              page.is_hidden('a.tab[data-view="queue"]') and page.is_hidden('a.tab[data-view="console"]')
              and page.is_hidden("#view-queue") and page.is_visible("#view-ingest")
              and value(page, "q-total_queued") is None and status == 403,
              (status, body))

        page.click("#forget")
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#key", "operator-secret-1")
        page.click("#login-form button")
        page.goto(gw.url + "#queue")
        wait_until("operator queue data", lambda: value(page, "q-total_queued") == "31")
        check("auth on, operator key: the queue view", True)
        check("auth scenario: no console errors", not errors and not dialogs, (errors, dialogs))
        page.close()
    finally:
        gw.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", default=str(ROOT / "target" / "debug" / "adflow-gateway"))
    ap.add_argument("--screenshot", default=str(ROOT / "docs" / "dashboard.png"))
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        skip(f"{e.name} not installed (pip install playwright grpcio grpcio-tools)")
    if not Path(args.gateway).exists():
        sys.exit(f"no gateway binary at {args.gateway} (cargo build -p adflow-gateway)")
    tmp = tempfile.mkdtemp(prefix="adflow-dash-")
    try:
        stubs(tmp)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                open_scenario(browser, args.gateway, tmp, args.screenshot)
                auth_scenario(browser, args.gateway, tmp)
            finally:
                browser.close()
    except Exception as e:
        check("the run completes", False, repr(e))
        for log in Path(tmp).glob("*/gateway.log"):
            print(f"--- {log}\n{log.read_text()[-3000:]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    passed = sum(ok for _, ok in RESULTS)
    failed = len(RESULTS) - passed
    print(f"dashboard browser test: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
