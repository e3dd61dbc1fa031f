"""Load test of `afinar serve`: N concurrent streaming clients for S seconds on loopback.

    python bench/serve_load.py                      # 16 clients, 60 s, a quick run of the demo recipe
    python bench/serve_load.py --run runs/demo/tutor-algoritmos --clients 16 --seconds 60
    python bench/serve_load.py --max-batch 1 16     # one server per setting, measured in one run

Steps:
  1. without --run, train the demo recipe on the embedded model for a few steps (the served
     weights do not change the cost of serving);
  2. start `afinar serve` in its own process on a free loopback port, wait for /health;
  3. each client loops for S seconds: a streamed request (questions from the demo's probe, in and
     out of the domain, so both generation and guard refusals are served), timing the first
     content token and the whole reply;
  4. the server's resident memory is sampled every second; growth is the last sample minus the
     first after warm-up;
  5. repeat for each --max-batch setting (1: replies one at a time; 16: concurrent replies
     generated in one batch), then print a table and write bench/results/serve_load.json.
Target (issue 6): zero errors and no memory growth.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from machine import quick_demo_run

HERE = Path(__file__).resolve().parent
PROBE = HERE.parent / "src" / "afinar" / "resources" / "demo" / "tutor_sondeo.jsonl"


def main(argv=None) -> dict:
    args = _args(argv)
    run = Path(args.run) if args.run else quick_demo_run()  # 1.
    rows = [_measure(run, args, batch) for batch in args.max_batch]
    report = {"command": "python bench/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "run": str(run), "clients": args.clients, "seconds": args.seconds, "max_tokens": args.max_tokens,
              "cpu": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "results": rows}
    report["markdown"] = _markdown(rows, args)
    out = HERE / "results" / "serve_load.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(report["markdown"])
    return report


def _measure(run: Path, args, max_batch: int) -> dict:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "afinar.cli", "serve", str(run), "--port", str(port), "--no-studio",
                               "--max-queue", str(args.clients * 2), "--max-batch", str(max_batch)], stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, server)  # 2.
        questions = [json.loads(line)["question"] for line in PROBE.read_text(encoding="utf-8").splitlines() if line.strip()]
        memory = _Memory(server.pid)
        memory.start()
        results = _load(url, questions, args)  # 3.
        memory.stop()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"max_batch": max_batch, **_summary(results, memory.samples)}  # 4.


def _args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run folder (default: a quick run of the demo recipe)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 16], help="serve with each of these settings in turn")
    return parser.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, server, seconds: float = 180) -> None:
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"afinar serve exited with status {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("afinar serve did not become ready")


class _Memory(threading.Thread):
    """Samples the server's resident set size (MB) once a second."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self._halt = pid, [], threading.Event()

    def run(self):
        while not self._halt.wait(1.0):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.samples.append(int(line.split()[1]) / 1024)

    def stop(self):
        self._halt.set()
        self.join()


def _load(url: str, questions: list[str], args) -> list[dict]:
    results, lock = [], threading.Lock()
    deadline = time.time() + args.seconds

    def client(seed: int):
        rng = random.Random(seed)
        while time.time() < deadline:
            row = _one(url, rng.choice(questions), args.max_tokens)
            with lock:
                results.append(row)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _one(url: str, question: str, max_tokens: int) -> dict:
    import httpx

    body = {"model": "default", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "stream": True}
    start, first, done, refused = time.perf_counter(), None, False, None
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as res:
            if res.status_code != 200:
                return {"ok": False, "error": f"HTTP {res.status_code}"}
            for line in res.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if chunk["choices"][0]["delta"].get("content") and first is None:
                    first = time.perf_counter()
                refused = chunk.get("afinar", {}).get("refused", refused)
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        return {"ok": False, "error": type(exc).__name__}
    end = time.perf_counter()
    if not done:
        return {"ok": False, "error": "stream ended without [DONE]"}
    return {"ok": True, "ttft": (first or end) - start, "total": end - start, "refused": bool(refused)}


def _summary(results: list[dict], memory: list[float]) -> dict:
    ok = [r for r in results if r["ok"]]
    errors = [r["error"] for r in results if not r["ok"]]
    pct = lambda values, q: statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else (values[0] if values else 0)
    ttft, total = [r["ttft"] for r in ok], [r["total"] for r in ok]
    warm = memory[len(memory) // 10:] or memory or [0.0]  # after the first tenth (warm-up)
    return {
        "served": len(ok), "refused": sum(r["refused"] for r in ok), "errors": len(errors), "error_kinds": sorted(set(errors)),
        "ttft_p50": pct(ttft, 50), "ttft_p95": pct(ttft, 95), "total_p50": pct(total, 50), "total_p95": pct(total, 95),
        "rss_start_mb": warm[0], "rss_mid_mb": warm[len(warm) // 2], "rss_end_mb": warm[-1], "rss_max_mb": max(warm),
        "rss_every_5s_mb": [round(m) for m in memory[::5]],
    }


def _markdown(rows: list[dict], args) -> str:
    lines = ["| max batch | clients | seconds | served (refused) | errors | TTFT p50 / p95 | total p50 / p95 | server RSS start -> middle -> end (max) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['max_batch']} | {args.clients} | {args.seconds:g} | {r['served']} ({r['refused']}) | {r['errors']} | "
                     f"{r['ttft_p50']:.2f} / {r['ttft_p95']:.2f} s | {r['total_p50']:.2f} / {r['total_p95']:.2f} s | "
                     f"{r['rss_start_mb']:.0f} -> {r['rss_mid_mb']:.0f} -> {r['rss_end_mb']:.0f} MB ({r['rss_max_mb']:.0f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
