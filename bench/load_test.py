"""Load test for serve.py: many chat clients at once, for a while; are replies and memory intact?

    OMP_NUM_THREADS=1 taskset -c 1 python bench/load_test.py -m SmolLM2-135M-Instruct -l bob --name Bob \
        --out docs/load_test.json

Starts serve.py with --memory on 127.0.0.1 (a free port, a fresh memory
folder), then --clients users talk to it at the same time for --duration
seconds through the official `openai` client, each as its own user, every
other request streamed, each sending its whole conversation so far as
SillyTavern does.  No client starts a request after --duration; those under
way finish.  Reported: requests per second (completed requests over the
whole wall time, drain included), latency p50/p95 (request sent -> last
byte), errors (any exception or error object), and memory turns lost: every
line a client said or was answered with, looked up in that user's memory file
after the server stopped (extra lines there are reported too).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from charlora.dialogue import parse_dialogue  # noqa: E402
from charlora.memory import memory_file  # noqa: E402


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def lost_lines(expected: list[tuple[str, str]], stored: list[tuple[str, str]]) -> tuple[int, int]:
    """(expected lines missing from the memory file, lines there that no client saw)."""
    want, have = Counter(expected), Counter(stored)
    return sum((want - have).values()), sum((have - want).values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_lines(name: str) -> list[str]:
    """What the clients say: the sample dialogue's lines by anyone but the character."""
    text = (REPO / "dataset.txt").read_text(encoding="utf-8")
    return [l.text for l in parse_dialogue(text) if l.speaker and l.speaker != name]


async def client(i: int, api, model: str, lines: list[str], stop_at: float, max_tokens: int, log: list) -> None:
    user = f"Load{i:02d}"
    messages: list[dict] = []
    turn = 0
    while time.monotonic() < stop_at:
        said = lines[(i * 7 + turn) % len(lines)]
        messages.append({"role": "user", "content": said})
        stream = turn % 2 == 1
        start = time.monotonic()
        try:
            if stream:
                reply = ""
                async for chunk in await api.chat.completions.create(model=model, messages=messages, user=user,
                                                                     max_tokens=max_tokens, stream=True):
                    if chunk.choices:
                        reply += chunk.choices[0].delta.content or ""
            else:
                out = await api.chat.completions.create(model=model, messages=messages, user=user, max_tokens=max_tokens)
                reply = out.choices[0].message.content or ""
            log.append({"user": user, "said": said, "reply": reply, "stream": stream, "error": None,
                        "seconds": time.monotonic() - start})
            if reply:
                messages.append({"role": "assistant", "content": reply})
        except Exception as exc:  # noqa: BLE001  every failure is counted, none stops the test
            log.append({"user": user, "said": said, "reply": None, "stream": stream, "seconds": time.monotonic() - start,
                        "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            messages.pop()
        turn += 1


async def drive(base: str, model: str, clients: int, duration: float, max_tokens: int, lines: list[str]) -> list:
    from openai import AsyncOpenAI

    api = AsyncOpenAI(base_url=base, api_key="none", max_retries=0, timeout=3600)
    log: list = []
    stop_at = time.monotonic() + duration
    await asyncio.gather(*(client(i, api, model, lines, stop_at, max_tokens, log) for i in range(clients)))
    await api.close()
    return log


def start_server(args, port: int, memory_dir: Path, log_path: Path) -> subprocess.Popen:
    import httpx2

    cmd = [sys.executable, str(REPO / "serve.py"), "-m", args.model_name, "--name", args.name, "--port", str(port),
           "--host", "127.0.0.1", "--memory_dir", str(memory_dir), "--max_queue", str(args.clients + 1)]
    cmd += ["-l", *args.lora_name] if args.lora_name else []
    cmd += args.server_args.split() if args.server_args else []
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx2.HTTPError:
            time.sleep(0.5)
    proc.kill()
    sys.exit(f"error: the server did not start; its log:\n{log_path.read_text()}")


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "transformers", "peft", "fastapi", "uvicorn", "openai")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-m", "--model_name", default="SmolLM2-135M-Instruct")
    p.add_argument("-l", "--lora_name", nargs="+", help="adapter(s) to serve")
    p.add_argument("--name", default="Bob", help="the character")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--duration", type=float, default=120, help="seconds during which clients start requests")
    p.add_argument("--max_tokens", type=int, default=60, help="max_tokens of every request")
    p.add_argument("--server_args", default="", help="more serve.py flags, e.g. '--summarizer extractive'")
    p.add_argument("--out", help="write the JSON record here")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="charlora-load-"))
    port = free_port()
    proc = start_server(args, port, work / "memory", work / "server.log")
    import httpx2

    model = httpx2.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]["id"]
    started = time.monotonic()
    log = asyncio.run(drive(f"http://127.0.0.1:{port}/v1", model, args.clients, args.duration, args.max_tokens,
                            user_lines(args.name)))
    wall = time.monotonic() - started
    proc.terminate()
    proc.wait(timeout=60)

    ok = [r for r in log if r["error"] is None]
    expected, stored, lost, extra = {}, {}, 0, 0
    for r in ok:
        lines = expected.setdefault(r["user"], [])
        lines.append((r["user"], r["said"]))
        if r["reply"]:
            lines.append((args.name, r["reply"]))
    for user, lines in expected.items():
        path = memory_file(work / "memory", args.name, user)
        with sqlite3.connect(path) as db:
            stored[user] = [tuple(row) for row in db.execute("SELECT speaker, text FROM turns ORDER BY id")]
        missing, more = lost_lines(lines, stored[user])
        lost, extra = lost + missing, extra + more
    seconds = [r["seconds"] for r in ok]
    result = {
        "requests": len(log), "completed": len(ok), "errors": len(log) - len(ok),
        "error_samples": sorted({r["error"] for r in log if r["error"]})[:5],
        "requests_per_second": round(len(ok) / wall, 3), "wall_seconds": round(wall, 1),
        "latency_p50_s": round(percentile(seconds, 50), 2) if seconds else None,
        "latency_p95_s": round(percentile(seconds, 95), 2) if seconds else None,
        "streamed": sum(r["stream"] for r in ok), "empty_replies": sum(not r["reply"] for r in ok),
        "memory_lines_expected": sum(map(len, expected.values())), "memory_turns_lost": lost,
        "memory_lines_extra": extra, "users": len(expected),
    }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    meta = {"command": " ".join(["python", "bench/load_test.py", *(argv if argv is not None else sys.argv[1:])]),
            "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "versions": versions(),
            "threads": os.environ.get("OMP_NUM_THREADS"), "cpus": sorted(os.sched_getaffinity(0)),
            "model": args.model_name, "adapters": args.lora_name, "clients": args.clients, "duration_s": args.duration,
            "max_tokens": args.max_tokens, "server_args": args.server_args}
    record = {"meta": meta, "result": result, "sample_replies": [r["reply"] for r in ok[:5]]}
    text = json.dumps(record, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0 if result["errors"] == 0 and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
