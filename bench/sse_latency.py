"""Event-stream latency: how long a job event takes from Redis pub/sub to an SSE client.

Usage: ``.venv/bin/python bench/sse_latency.py --url http://127.0.0.1:8000 --token ll_… --redis redis://…
--user-id 1 [--events 50]``

Against a running ``latentlab web``: opens ``/api/v1/events`` with the token, publishes ``--events`` job
events for the token's user on ``common.jobs.broker.EVENTS_CHANNEL`` (as ``common.jobs`` does, with a send
time added), and measures when each arrives. Also times how long the first byte of the stream takes.
Prints figures; decides nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a script from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

from common.jobs.broker import EVENTS_CHANNEL  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--redis", required=True)
    ap.add_argument("--user-id", type=int, required=True)
    ap.add_argument("--events", type=int, default=50)
    args = ap.parse_args()

    where = urlsplit(args.url)
    conn = http.client.HTTPConnection(where.hostname, where.port or 80, timeout=30)
    t0 = time.perf_counter()
    conn.request("GET", "/api/v1/events", headers={"Authorization": f"Bearer {args.token}"})
    res = conn.getresponse()
    assert res.status == 200, (res.status, res.read()[:300])
    first_line = res.readline()
    print(
        f"stream open, first byte: {(time.perf_counter() - t0) * 1000:.1f} ms ({first_line.strip().decode()})"
    )

    arrivals: dict[int, float] = {}
    done = threading.Event()

    def read() -> None:
        event = None
        while not done.is_set():
            line = res.readline()
            if not line:
                return
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                event = text.removeprefix("event: ")
            elif text.startswith("data: ") and event == "job":
                data = json.loads(text.removeprefix("data: "))
                if "bench_seq" in data:
                    arrivals[data["bench_seq"]] = time.time() - data["bench_sent"]
                    if len(arrivals) == args.events:
                        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    client = redis.Redis.from_url(args.redis)
    time.sleep(0.5)
    for seq in range(args.events):
        event = {
            "id": 10**9 + seq,
            "kind": "ping",
            "owner_id": args.user_id,
            "parent_id": None,
            "status": "running",
            "queue": "interactive",
            "progress": seq / args.events,
            "progress_message": "bench",
            "error": None,
            "result": None,
            "bench_seq": seq,
            "bench_sent": time.time(),
        }
        client.publish(EVENTS_CHANNEL, json.dumps(event))
        time.sleep(0.05)
    done.wait(timeout=30)
    client.close()
    conn.close()
    got = sorted(arrivals.values())
    if not got:
        print("no event arrived")
        return
    ms = [x * 1000 for x in got]
    print(
        f"{len(got)}/{args.events} events; publish → SSE client: median {statistics.median(ms):.1f} ms, "
        f"p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
