"""Sign-in benchmark: emergency-password sign-ins through the portal against bare argon2.

One command (``.venv/bin/python -m bench.signin_bench``) makes a roster with N people
(200 by default) in one domain where Continuity Service is active for all users and the
emergency password is switched on, each person with an emergency password of their own
(argon2id, ``roster.passwords``), and measures, in the same run:

1. the bare verify rate: ``roster.passwords.HASHER`` verifying one hash, in as many
   processes at once as the portal has workers (2: one per core here);
2. the portal: ``continuity serve --workers 2`` (gunicorn) in a process of its own, and
   a load generator in another one: threads that each sign in again and again, a GET
   /sign-in (session cookie and CSRF token) then a POST /sign-in that counts when it
   answers 302 to /me, after a warm-up.

The two are measured in turn, in rounds (6 x 2.5 s each by default: this machine's
speed drifts by several percent over tens of seconds, and short turns let both sides see
the same drift), so that a burst of other work on the machine weighs on both alike; the
CPU used by other processes in each
round is measured and a warning printed when it is not negligible. No directory source
is configured, so every sign-in goes straight to the emergency password, as on the day
the directory is down. The load generator runs on the same cores as the portal; the CPU
it takes is printed with the figures. When the portal reaches less than the target
share of the bare rate (or with ``--profile``), sign-ins are then profiled in-process
(``app.test_client``, cProfile) to show where their time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import json
import multiprocessing
import os
import pstats
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

from bench.sync_bench import _database, _drop_database

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "bench.test"
TARGET = 0.80
CSRF_RE = re.compile(rb'name="csrf_token" type="hidden" value="([^"]+)"')
COOKIE_RE = re.compile(rb"(?im)^set-cookie: (continuity_session=[^;\r\n]*)")
LOCATION_RE = re.compile(rb"(?im)^location: ([^\r\n]*)")


def _address(n: int) -> str:
    return f"u{n:05d}@{DOMAIN}"


def _password(n: int) -> str:
    return f"emergency password of bench person {n:05d}"


def _hash(n: int) -> str:
    from roster.passwords import hash_password

    return hash_password(_password(n))


def _roster(url: str, people: int) -> None:
    """Schema, the domain and its people, each with an emergency password."""
    from roster.db import make_engine, session_factory, transaction, upgrade
    from roster.domains import add_domain
    from roster.models import COVERAGE_ALL, EmergencyCredential, Person, utcnow

    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        hashes = pool.map(_hash, range(people))
    engine = make_engine(url, create=True)
    upgrade(engine)
    with transaction(session_factory(engine), writing=True) as session:
        domain = add_domain(session, DOMAIN, "bench")
        domain.continuity_active = True
        domain.coverage_mode = COVERAGE_ALL
        domain.emergency_password_enabled = True
        now = utcnow()
        for n, hashed in enumerate(hashes):
            person = Person(
                domain_id=domain.id,
                source="bench",  # no [[directory]] of that name: no bind is tried
                external_id=f"bench-{n}",
                dn=f"uid=u{n:05d},ou=people,dc=bench,dc=test",
                mail=_address(n),
                display_name=f"Bench Person {n}",
                created_at=now,
                updated_at=now,
            )
            session.add(person)
            session.flush()
            session.add(EmergencyCredential(person_id=person.id, password_hash=hashed, set_at=now))
    engine.dispose()


def _config(workdir: Path, url: str) -> Path:
    path = workdir / "continuity.toml"
    path.write_text(
        f"[database]\nurl = {json.dumps(url)}\n\n[portal]\n"
        'secret_key = "continuity sign-in benchmark, not a secret"\nsecure_cookies = false\n',
        encoding="utf-8",
    )
    return path


def _phase(args: list[str]) -> dict[str, Any]:
    """Run one phase in a fresh interpreter; returns its JSON result."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.signin_bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"phase {args[1]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------
# Phase: the bare verify rate
# ---------------------------------------------------------------------------
def _verify_loop(
    stored: str, password: str, start: float, seconds: float
) -> tuple[int, float, float]:
    """Verify from ``start`` (a CLOCK_MONOTONIC time) for ``seconds``.

    Returns the verifications done, the time they took and the CPU time they used.
    """
    from roster.passwords import HASHER

    while time.monotonic() < start:
        time.sleep(0.001)
    cpu, count, now = time.process_time(), 0, start
    while now - start < seconds:
        HASHER.verify(stored, password)
        count += 1
        now = time.monotonic()
    return count, now - start, time.process_time() - cpu


def _verify_rate(stored: str, processes: int, seconds: float) -> dict[str, float]:
    """Verifications per second of ``processes`` processes verifying at once."""
    start = time.monotonic() + 0.5
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pending = pool.starmap_async(
            _verify_loop, [(stored, _password(0), start, seconds)] * processes
        )
        time.sleep(max(start - time.monotonic(), 0))
        before = _machine_busy()
        results = pending.get()
        after = _machine_busy()
    per_process = [count / elapsed for count, elapsed, _ in results]
    wall = max(elapsed for _, elapsed, _ in results)
    return {
        "rate": sum(per_process),
        "ms_per_verify": 1000 * statistics.mean(1 / rate for rate in per_process),
        "other_cpu": max(after - before - sum(cpu for _, _, cpu in results), 0) / wall,
    }


def bare(processes: int, seconds: float, single: float) -> None:
    """Phase: argon2 verify of one hash in ``processes`` processes at once.

    With ``single``, first that many seconds in one process alone.
    """
    from roster.passwords import HASHER

    stored = HASHER.hash(_password(0))
    _verify_loop(stored, _password(0), time.monotonic(), 0.5)  # warm-up
    alone = _verify_rate(stored, 1, single)["rate"] if single else None
    result: dict[str, Any] = _verify_rate(stored, processes, seconds)
    result["single_rate"] = alone
    result["parameters"] = (
        f"m={HASHER.memory_cost} KiB, t={HASHER.time_cost}, p={HASHER.parallelism}"
    )
    print(json.dumps(result))


# ---------------------------------------------------------------------------
# Phase: the load generator
# ---------------------------------------------------------------------------
def _exchange(host: str, port: int, request: bytes) -> tuple[int, bytes, bytes]:
    """Send one HTTP/1.1 request on a connection of its own; returns the status, the
    header block and the body. Raw sockets: the load generator shares the portal's
    cores, so it should take as little of them as it can (http.client's header parsing
    costs more than the rest of it)."""
    with socket.create_connection((host, port), timeout=60) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head[9:12]) if head.startswith(b"HTTP/1.") else 0
    return status, head, body


def _sign_in(host: str, port: int, n: int) -> str:
    """One sign-in as a browser does it; returns "ok" or what went wrong."""
    status, head, page = _exchange(
        host, port, f"GET /sign-in HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    cookie = COOKIE_RE.search(head)
    token = CSRF_RE.search(page)
    if status != 200 or cookie is None or token is None:
        return f"GET {status}"
    form = urllib.parse.urlencode(
        {"csrf_token": token.group(1).decode(), "address": _address(n), "password": _password(n)}
    ).encode()
    status, head, _ = _exchange(
        host,
        port,
        b"POST /sign-in HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n"
        b"Cookie: %s\r\n\r\n%s" % (host.encode(), len(form), cookie.group(1), form),
    )
    location = LOCATION_RE.search(head)
    path = urllib.parse.urlsplit(location.group(1).decode()).path if location else ""
    if status == 302 and path == "/me":
        return "ok"
    return f"POST {status} {path}".strip()


def _processes() -> dict[int, tuple[int, str, float]]:
    """Every process: its parent, its name and the CPU seconds it has used."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name, _, rest = (entry / "stat").read_text().partition(" (")[2].rpartition(")")
            except OSError:
                continue
            fields = rest.split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            found[int(entry.name)] = (int(fields[1]), name, cpu)
    return found


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def _cpu_sample(server: int) -> dict[str, float]:
    """CPU seconds used so far by the load generator, the portal, PostgreSQL, everything."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    processes = _processes()
    return {
        "load": usage.ru_utime + usage.ru_stime,
        "server": sum(
            cpu for pid, (parent, _, cpu) in processes.items() if server in (pid, parent)
        ),
        "database": sum(cpu for _, name, cpu in processes.values() if name == "postgres"),
        "busy": _machine_busy(),
    }


def load(
    url: str, people: int, concurrency: int, warmup: float, seconds: float, server: int
) -> None:
    """Phase: sign in from ``concurrency`` threads; figures for the measured window."""
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    counter = iter(range(sys.maxsize))
    lock = threading.Lock()
    done: list[tuple[float, float, str]] = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            with lock:
                n = next(counter) % people
            began = time.monotonic()
            try:
                outcome = _sign_in(host, port, n)
            except (OSError, ValueError) as error:
                outcome = type(error).__name__
            done.append((began, time.monotonic(), outcome))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    window = start + warmup
    time.sleep(max(window - time.monotonic(), 0))
    before = _cpu_sample(server)
    time.sleep(max(window + seconds - time.monotonic(), 0))
    after = _cpu_sample(server)
    stop.set()
    for thread in threads:
        thread.join()
    measured = [(b, e, o) for b, e, o in done if window <= e < window + seconds]
    cpu = {key: after[key] - before[key] for key in before}
    print(
        json.dumps(
            {
                "rate": sum(o == "ok" for _, _, o in measured) / seconds,
                "latencies_ms": [1000 * (e - b) for b, e, o in measured if o == "ok"],
                "failures": dict(Counter(o for _, _, o in measured if o != "ok")),
                "load_cpu": cpu["load"] / seconds,
                "server_cpu": cpu["server"] / seconds,
                "database_cpu": cpu["database"] / seconds,
                "other_cpu": max(cpu["busy"] - cpu["server"] - cpu["load"] - cpu["database"], 0)
                / seconds,
            }
        )
    )


# ---------------------------------------------------------------------------
# Phase: where the time of one sign-in goes
# ---------------------------------------------------------------------------
# Functions whose cumulative time is shown: (label, file suffix, function name).
PROFILED = [
    ("POST: the view (sign_in_page)", "portal/auth.py", "sign_in_page"),
    ("POST: check_sign_in", "portal/signin.py", "check_sign_in"),
    ("check_sign_in: argon2 verify_password", "roster/passwords.py", "verify_password"),
    ("check_sign_in: sign_in_facts", "roster/identity.py", "sign_in_facts"),
    ("check_sign_in: throttle.attempt", "roster/throttle.py", "attempt"),
    ("check_sign_in: throttle.succeeded", "roster/throttle.py", "succeeded"),
    ("check_sign_in: audit", "roster/domains.py", "audit"),
    ("check_sign_in: open_session", "roster/identity.py", "open_session"),
    (
        "check_sign_in: begin and commit of its two write transactions",
        "portal/access.py",
        "writing_connection",
    ),
    ("POST: start_session", "portal/access.py", "start_session"),
    ("GET: render_template", "flask/templating.py", "render_template"),
    ("GET+POST: session cookie open", "flask/sessions.py", "open_session"),
    ("GET+POST: session cookie save", "flask/sessions.py", "save_session"),
]


def _package(filename: str, function: str) -> str:
    """Which part of the stack a profiled function belongs to."""
    if filename == "~":
        for name in ("argon2", "sqlite3", "psycopg", "hmac", "sha", "zlib"):
            if name in function:
                return "argon2" if name == "argon2" else name
        return "builtins"
    path = Path(filename).as_posix()
    if "site-packages/" in path:
        return path.split("site-packages/")[1].split("/")[0].removesuffix(".py")
    if path.startswith(str(ROOT)):
        return Path(path).relative_to(ROOT).parts[0] + " (this project)"
    return "python stdlib"


def profile(config_path: str, people: int, rounds: int) -> None:
    """Phase: sign-ins through ``app.test_client`` in this process, timed then profiled."""
    from portal import create_app
    from roster.config import load_config
    from roster.passwords import HASHER

    app = create_app(config=load_config(config_path))

    def sign_in(client: Any, n: int) -> tuple[float, float]:
        began = time.perf_counter()
        page = client.get("/sign-in").data
        middle = time.perf_counter()
        token = CSRF_RE.search(page)
        assert token is not None
        response = client.post(
            "/sign-in",
            data={
                "csrf_token": token.group(1).decode(),
                "address": _address(n),
                "password": _password(n),
            },
        )
        assert response.status_code == 302, response.status_code
        return middle - began, time.perf_counter() - middle

    def client() -> Any:
        return app.test_client()

    for n in range(5):
        sign_in(client(), n)
    timed = [sign_in(client(), n % people) for n in range(rounds)]
    stored = HASHER.hash(_password(0))
    began = time.perf_counter()
    for _ in range(rounds):
        HASHER.verify(stored, _password(0))
    verify_ms = 1000 * (time.perf_counter() - began) / rounds

    profiler = cProfile.Profile()
    profiler.enable()
    for n in range(rounds):
        sign_in(client(), n % people)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in stats.values())
    functions = []
    for label, suffix, name in PROFILED:
        cumulative = sum(
            ct
            for (file, _, func), (_, _, _, ct, _) in stats.items()
            if func == name and Path(file).as_posix().endswith(suffix)
        )
        functions.append((label, 1000 * cumulative / rounds))
    packages: Counter[str] = Counter()
    for (file, _, func), (_, _, tt, _, _) in stats.items():
        packages[_package(file, func)] += tt
    print(
        json.dumps(
            {
                "rounds": rounds,
                "get_ms": 1000 * statistics.mean(get for get, _ in timed),
                "post_ms": 1000 * statistics.mean(post for _, post in timed),
                "verify_ms": verify_ms,
                "profiled_ms": 1000 * total / rounds,
                "functions": functions,
                "packages": [(k, 1000 * v / rounds) for k, v in packages.most_common()],
            }
        )
    )


# ---------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------
def _serve(config: Path, port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    """`continuity serve` in a process of its own; returns once /health answers."""
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "continuity",
                "--config",
                str(config),
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the portal stopped:\n{log.read_text(errors='replace')[-3000:]}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/health", headers={"Accept": "application/json"})
            if connection.getresponse().status == 200:
                return server
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.2)
    _stop(server)
    raise SystemExit(f"the portal did not answer /health:\n{log.read_text(errors='replace')}")


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _mean(results: list[dict[str, Any]], key: str) -> float:
    return float(statistics.mean(result[key] for result in results))


def main() -> None:
    """Run the whole benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=200, help="people signing in in turn")
    parser.add_argument(
        "--seconds", type=float, default=15.0, help="measured time of each side, in all rounds"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="bare and portal measured in turn this many times (evens out other load)",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="load before each round")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--concurrency", type=int, default=6, help="load generator threads")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run on PostgreSQL: a database of the run's own is made (and dropped) there",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile a sign-in even when on target"
    )
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--single", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "bare":
        return bare(args.workers, args.seconds, args.single)
    if args.phase == "load":
        return load(args.url, args.people, args.concurrency, args.warmup, args.seconds, args.server)
    if args.phase == "profile":
        return profile(args.config, args.people, 50)

    from continuity.localslapd import free_port

    started = time.perf_counter()
    slice_seconds = args.seconds / args.rounds
    verifies: list[dict[str, Any]] = []
    portals: list[dict[str, Any]] = []
    profiled = None
    with tempfile.TemporaryDirectory(prefix="continuity-bench-") as tmp:
        workdir = Path(tmp)
        url = _database(args.postgres, workdir)
        try:
            _roster(url, args.people)
            setup_seconds = time.perf_counter() - started
            config = _config(workdir, url)
            port = free_port()
            server = _serve(config, port, args.workers, workdir / "portal.log")
            common = ["--seconds", str(slice_seconds), "--workers", str(args.workers)]
            try:
                for round_ in range(args.rounds):
                    single = ["--single", "5"] if round_ == 0 else []
                    verifies.append(_phase(["--phase", "bare", *common, *single]))
                    portals.append(
                        _phase(
                            [
                                "--phase",
                                "load",
                                *common,
                                "--url",
                                f"http://127.0.0.1:{port}",
                                "--people",
                                str(args.people),
                                "--concurrency",
                                str(args.concurrency),
                                "--warmup",
                                str(args.warmup),
                                "--server",
                                str(server.pid),
                            ]
                        )
                    )
            finally:
                _stop(server)
                log = (workdir / "portal.log").read_text(errors="replace")
            ratio = _mean(portals, "rate") / _mean(verifies, "rate")
            if ratio < TARGET or args.profile:
                profiled = _phase(
                    ["--phase", "profile", "--config", str(config), "--people", str(args.people)]
                )
        finally:
            if args.postgres:
                _drop_database(args.postgres, url)

    workers, cores = args.workers, os.cpu_count()
    verify_rate, portal_rate = _mean(verifies, "rate"), _mean(portals, "rate")
    latencies = [ms for result in portals for ms in result["latencies_ms"]]
    quantiles = statistics.quantiles(latencies, n=100)
    failures: Counter[str] = Counter()
    for result in portals:
        failures.update(result["failures"])
    print(
        f"# sign-in benchmark: {args.people:,} people, {cores} cores,"
        f" {url.split(':')[0]}, argon2id {verifies[0]['parameters']}"
    )
    print(
        "Emergency-password sign-ins (no directory source configured, so no bind is tried),"
        f" each a GET and a POST /sign-in, from {args.concurrency} client threads. Bare verify"
        f" and portal measured in turn, {args.rounds} x {slice_seconds:g} s each"
        f" ({args.warmup:g} s warm-up before each portal round)."
        f" Setup (hashing, roster): {setup_seconds:.1f} s."
    )
    print("| run | rate | vs bare verify | latency | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(
        f"| bare argon2 verify, {workers} processes (the limit) | {verify_rate:.1f}/s | 1.00 |"
        f" {_mean(verifies, 'ms_per_verify'):.1f} ms per verify | - |"
    )
    print(
        f"| portal sign-ins, gunicorn {workers} workers | {portal_rate:.1f}/s | {ratio:.2f} |"
        f" p50 {quantiles[49]:.0f} ms, p95 {quantiles[94]:.0f} ms | >= {TARGET:.2f} |"
    )
    print(
        "Rounds (bare / portal, per second): "
        + ", ".join(
            f"{v['rate']:.1f} / {p['rate']:.1f}" for v, p in zip(verifies, portals, strict=True)
        )
        + f". One verify in one process alone: {verifies[0]['single_rate']:.1f}/s"
        f" ({1000 / verifies[0]['single_rate']:.1f} ms)."
    )
    print(
        f"CPU while the portal was measured, in cores of {cores}: portal (gunicorn)"
        f" {_mean(portals, 'server_cpu'):.2f}, load generator {_mean(portals, 'load_cpu'):.2f}"
        f" (it shares the portal's cores),"
        + (f" PostgreSQL {_mean(portals, 'database_cpu'):.2f}," if args.postgres else "")
        + f" other processes {_mean(portals, 'other_cpu'):.2f};"
        f" while bare verify was: other processes {_mean(verifies, 'other_cpu'):.2f}."
    )
    other = max(result["other_cpu"] for result in verifies + portals)
    if other > 0.1:
        print(
            f"WARNING: other processes used up to {other:.2f} cores in a round:"
            " the figures are not those of a quiet machine."
        )
    if failures:
        print(f"sign-ins that failed: {dict(failures)}")
    if "Traceback" in log or "[ERROR]" in log:
        print(f"the portal logged errors; the end of its log:\n{log[-3000:]}")
    if profiled:
        rounds = profiled["rounds"]
        share = profiled["verify_ms"] / (profiled["get_ms"] + profiled["post_ms"])
        print(
            f"\nOne sign-in in-process (app.test_client, {rounds} rounds, no profiler):"
            f" GET {profiled['get_ms']:.1f} ms + POST {profiled['post_ms']:.1f} ms, one argon2"
            f" verify alone {profiled['verify_ms']:.1f} ms: argon2 is {share:.0%} of a sign-in's"
            " own time in one process."
        )
        print(f"Under cProfile ({profiled['profiled_ms']:.1f} ms per sign-in, with its overhead):")
        print("| cumulative, per sign-in | ms |")
        print("| --- | ---: |")
        for label, ms in profiled["functions"]:
            print(f"| {label} | {ms:.2f} |")
        print("| own time by package, per sign-in | ms |")
        print("| --- | ---: |")
        for package, ms in profiled["packages"][:12]:
            print(f"| {package} | {ms:.2f} |")
    print(f"run time: {time.perf_counter() - started:.0f} s")
    assert not failures, dict(failures)


if __name__ == "__main__":
    main()
