#!/usr/bin/env python3
"""Load check of `sd serve` (issue 18): many concurrent clients, many jobs, random cancels and
disconnects, on a tiny fixture model. Standard library only; outside `cargo test`.

It starts `sd serve --queue-size Q` on a free port, then CLIENTS threads submit JOBS jobs in
all, half on the native API (POST /api/v1/jobs, then polled; one in five cancelled at a random
moment) and half on A1111's txt2img (one in five connections dropped before the reply); a client answered
429 tries again shortly after. It
checks that every accepted native job ends `succeeded` or `cancelled` (none lost, no id twice),
that a full queue answered 429 and nothing answered 5xx, and that the server's resident memory
after the run (once the results' 5 s time-to-live is over) is within 10% of what it was after
the first 50 jobs.

    cargo build --release -p sd-cli
    python3 tools/serve/load_check.py --sd target/release/sd
"""

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def call(url, method="GET", body=None, timeout=300):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def small(seed):
    return {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": seed}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sd", default=os.path.join(ROOT, "target/release/sd"))
    parser.add_argument("--model", default=os.path.join(ROOT, "fixtures/models/tiny-sd15"))
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--queue-size", type=int, default=16)
    args = parser.parse_args()

    server = subprocess.Popen(
        [args.sd, "serve", "--model", args.model, "--listen", "127.0.0.1:0",
         "--queue-size", str(args.queue_size), "--result-ttl", "5s"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    match = re.search(r"listening on http://(\S+)", server.stdout.readline())
    if not match:
        server.kill()
        sys.exit("sd serve did not start")
    base = "http://" + match.group(1)
    host, port = match.group(1).rsplit(":", 1)

    lock = threading.Lock()
    statuses = {}          # status code -> count
    accepted = []          # native job ids
    cancelled_asked = set()
    ends = {}              # native job id -> how it ended
    done = [0]
    rss_at_50 = [None]

    def count(code):
        with lock:
            statuses[code] = statuses.get(code, 0) + 1

    def submit(path, index):
        # A full queue is 429: counted, and the client tries again a little later.
        while True:
            code, reply = call(base + path, "POST", small(index))
            count(code)
            if code != 429:
                return code, reply
            time.sleep(0.05 + random.random() * 0.1)

    def one_job(index):
        if index % 2 == 0:
            code, reply = submit("/api/v1/jobs", index)
            if code != 202:
                return
            job = reply["id"]
            with lock:
                accepted.append(job)
            if random.random() < 0.2:
                time.sleep(random.random() * 0.3)
                code, _ = call(f"{base}/api/v1/jobs/{job}/cancel", "POST", {})
                count(code)
                with lock:
                    cancelled_asked.add(job)
            # As a client does: follow the job to its end.
            while True:
                code, reply = call(f"{base}/api/v1/jobs/{job}")
                if reply.get("status") not in ("queued", "running"):
                    with lock:
                        ends[job] = reply.get("status")
                    break
                time.sleep(0.05)
        elif random.random() < 0.2:
            # A client that goes away before its reply.
            with socket.create_connection((host, int(port))) as connection:
                body = json.dumps(small(index)).encode()
                connection.sendall(
                    b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                time.sleep(random.random() * 0.2)
        else:
            submit("/sdapi/v1/txt2img", index)
        with lock:
            done[0] += 1
            if done[0] == 50:
                rss_at_50[0] = rss_kib(server.pid)

    indices = list(range(args.jobs))
    def client():
        while True:
            with lock:
                if not indices:
                    return
                index = indices.pop()
            one_job(index)

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    start = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Results are kept 5 s, swept every 5 s: after that only leaks would remain.
    time.sleep(12)
    rss_end = rss_kib(server.pid)
    server.terminate()
    server.wait(timeout=60)

    failures = []
    if len(set(accepted)) != len(accepted):
        failures.append("a job id was handed out twice")
    bad = {j: ends.get(j) for j in accepted if ends.get(j) not in ("succeeded", "cancelled")}
    if bad:
        failures.append(f"jobs that did not end cleanly: {bad}")
    wrong = [j for j, s in ends.items() if s == "cancelled" and j not in cancelled_asked]
    if wrong:
        failures.append(f"jobs cancelled that nobody cancelled: {wrong}")
    if any(code >= 500 for code in statuses):
        failures.append(f"5xx answers: {statuses}")
    if statuses.get(429, 0) == 0:
        failures.append("no 429 although clients outnumber the queue")
    growth = rss_end / rss_at_50[0] - 1 if rss_at_50[0] else float("nan")
    if not growth <= 0.10:
        failures.append(f"resident memory grew {growth:.1%} after the first 50 jobs")
    print(f"{args.jobs} jobs, {args.clients} clients in {time.time() - start:.1f} s; answers {statuses}")
    print(f"native jobs accepted {len(accepted)}: "
          f"{sum(s == 'succeeded' for s in ends.values())} succeeded, "
          f"{sum(s == 'cancelled' for s in ends.values())} cancelled")
    print(f"resident memory after 50 jobs {rss_at_50[0]} KiB, at the end {rss_end} KiB ({growth:+.1%})")
    for failure in failures:
        print("FAIL " + failure)
    print("all checks passed" if not failures else f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
