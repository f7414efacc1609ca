#!/usr/bin/env python3
"""`make soak`: meshguard in real Envoy (--concurrency 2) under a steady load for a long while,
with churning tokens and users, and an identity provider that rotates its signing key.

Every request knows what it should get (a fresh or a repeated valid token → 200; a forged,
expired, unknown-kid or missing token → 401; a greedy user → 200 or 429), so any other status is
counted as unexpected, and any request without an answer (connection error, timeout) as dropped.
Envoy's memory (tcmalloc's allocated bytes, and the process's resident set, which includes the
Wasm VMs' linear memory) is sampled throughout: start (after warm-up), peak and end.

Hang-ups and a flaky IdP: a share of the requests (`--hang-up`, 10%) come from clients that
close their connection right after sending, or a few milliseconds later, without reading the
answer; a share of the IdP's answers (`--slow-idp`, 15%) come later than the fetch timeout. Neither
may leave anything behind: no later request is answered wrongly, memory stays flat.

Rotation, as an IdP does it safely: publish the next key beside the current one, sign with it
once every worker has had time to fetch it (a third of the period, twice `cache_duration`),
drop the old key a third later. Exit status 1 on any unexpected status, drop, or memory growth.

Writes soak.json and soak.md to --out (default benches/results)."""

import argparse
import collections
import http.client
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.envoy import Envoy  # noqa: E402
from support.jose import ISSUER, Signer, jwks  # noqa: E402
from support.servers import Idp, Upstream  # noqa: E402

# Request mix: class -> share. Users churn: 20,000 of them, far more than the token cache
# (2,048) or a worker's rate-limit slots hold.
MIX = {"fresh": 0.55, "repeat": 0.20, "greedy": 0.08, "forged": 0.05, "expired": 0.05, "unknown kid": 0.02, "no token": 0.05}
EXPECTED = {"fresh": {200}, "repeat": {200}, "greedy": {200, 429}, "forged": {401}, "expired": {401}, "unknown kid": {401}, "no token": {401}}
USERS = 20_000
GREEDY_USERS = 2
# Memory may move a little (allocator pools, V8's code space); more than this is growth.
GROWTH_ALLOWED_MIB = 8.0


def plugin_config(cache_duration_s):
    return {
        "providers": {
            "corp": {
                "issuer": ISSUER,
                "remote_jwks": {"cluster": "idp", "uri": "http://idp.meshguard.test/.well-known/jwks.json", "timeout": "1s", "cache_duration": f"{cache_duration_s}s"},
                "claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}],
            }
        },
        # Twenty requests a second per user. Ordinary users never reach it: a repeated token comes
        # back 0.6 times a second at 600 req/s (five a second would be reached by chance now and
        # then, Poisson-wise); the two greedy users send 24 a second each.
        "rate_limits": {"per_user": {"key": "claim:sub", "token_bucket": {"max_tokens": 20, "tokens_per_fill": 20, "fill_interval": "1s"}}},
        "rules": [{"name": "api", "match": {"prefix": "/api"}, "requires": "corp", "rate_limits": ["per_user"]}],
        "access_log": {"enabled": True, "sample_rate": 0.01},
    }


class Keys:
    """The IdP's keys and the rotation schedule; hands out tokens signed with the current key."""

    def __init__(self, idp, period_s):
        self.idp = idp
        self.period_s = period_s
        self.lock = threading.Lock()
        self.current = Signer("ES256")
        self.next = self.previous = None
        self.stranger = Signer("ES256")
        self.rotations = 0
        self.repeat_pool = []
        # (rotation cycle, stage): stage 0 next key published, 1 signing with it, 2 old key dropped.
        self.reached = (0, 2)
        self._publish()

    def _publish(self):
        self.idp.jwks = jwks(*[k for k in (self.previous, self.current, self.next) if k])

    def tick(self, elapsed_s):
        cycle, into = divmod(elapsed_s, self.period_s)
        target = (int(cycle), min(2, int(3 * into / self.period_s)))
        with self.lock:
            while self.reached < target:
                cycle_reached, stage = self.reached
                if stage == 2:
                    self.next = Signer("ES256")
                    self.reached = (cycle_reached + 1, 0)
                elif stage == 0:
                    self.previous, self.current, self.next = self.current, self.next, None
                    self.repeat_pool = []
                    self.rotations += 1
                    self.reached = (cycle_reached, 1)
                else:
                    self.previous = None
                    self.reached = (cycle_reached, 2)
                self._publish()

    def token(self, kind, rng):
        with self.lock:
            signer = self.current
            if kind == "repeat" and len(self.repeat_pool) >= 200:
                return rng.choice(self.repeat_pool)
        if kind in ("fresh", "repeat"):
            token = signer.sign(sub=f"user-{rng.randrange(USERS)}", jti=os.urandom(6).hex())
            if kind == "repeat":
                with self.lock:
                    if signer is self.current:
                        self.repeat_pool.append(token)
            return token
        if kind == "greedy":
            return signer.sign(sub=f"greedy-{rng.randrange(GREEDY_USERS)}")
        if kind == "forged":
            return self.stranger.sign(headers={"kid": signer.kid})
        if kind == "expired":
            now = int(time.time())
            return signer.sign(iat=now - 900, exp=now - 300)
        if kind == "unknown kid":
            return self.stranger.sign(headers={"kid": f"unknown-{rng.randrange(1000)}"})
        return None


class Load:
    """Threads sending requests at a steady total rate over keep-alive connections."""

    def __init__(self, port, keys, rate, threads, hang_up):
        self.port, self.keys, self.rate, self.threads, self.hang_up = port, keys, rate, threads, hang_up
        self.hung_up = 0
        self.tally = collections.Counter()
        self.unexpected = collections.Counter()
        self.dropped = 0
        self.sent = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self):
        for worker in self.workers:
            worker.start()

    def stop(self):
        self.stopping.set()
        for worker in self.workers:
            worker.join(timeout=10)

    def _run(self, index):
        rng = random.Random(index)
        kinds, weights = list(MIX), list(MIX.values())
        interval = self.threads / self.rate
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        due = time.monotonic()
        while not self.stopping.is_set():
            due += interval
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            kind = rng.choices(kinds, weights)[0]
            token = self.keys.token(kind, rng)
            headers = {"authorization": f"Bearer {token}"} if token else {}
            if rng.random() < self.hang_up:
                self._hang_up(f"/api/orders/{rng.randrange(1000)}", headers, rng)
                continue
            try:
                conn.request("GET", f"/api/orders/{rng.randrange(1000)}", headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.sent += 1
                    self.dropped += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                continue
            with self.lock:
                self.sent += 1
                self.tally[(kind, status)] += 1
                if status not in EXPECTED[kind]:
                    self.unexpected[(kind, status)] += 1
        conn.close()

    def _hang_up(self, path, headers, rng):
        """A client that sends its request and leaves: at once, or a few milliseconds later."""
        head = f"GET {path} HTTP/1.1\r\nHost: svc\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers.items()) + "\r\n"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
                conn.sendall(head.encode())
                if rng.random() < 0.5:
                    time.sleep(rng.uniform(0, 0.02))
        except OSError:
            pass
        with self.lock:
            self.hung_up += 1


def sample(envoy):
    return {
        "t": time.monotonic(),
        "allocated_mib": envoy.stat("server.memory_allocated") / 2**20,
        "heap_mib": envoy.stat("server.memory_heap_size") / 2**20,
        "rss_mib": envoy.rss_mib(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=600, help="length of the measured run (after warm-up)")
    parser.add_argument("--warm-up", type=int, default=30)
    parser.add_argument("--rate", type=int, default=600, help="requests per second, all threads together")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rotate", type=int, default=60, help="seconds between key rotations")
    parser.add_argument("--report", type=int, default=60, help="seconds between progress lines")
    parser.add_argument("--hang-up", type=float, default=0.10, help="share of requests whose client leaves mid-request")
    parser.add_argument("--slow-idp", type=float, default=0.15, help="share of JWKS answers later than the fetch timeout")
    parser.add_argument("--out", default=str(REPO / "benches" / "results"))
    args = parser.parse_args()

    cache_duration_s = max(1, args.rotate // 6)
    upstream = Upstream().start()
    idp = Idp("{}").start()
    # Later than the 1 s fetch timeout: Envoy gives up on it, the lease's back-off retries.
    idp.slow_share, idp.delay = args.slow_idp, 1.5
    keys = Keys(idp, args.rotate)
    with tempfile.TemporaryDirectory() as workdir:
        envoy = Envoy(plugin_config(cache_duration_s), {"upstream": upstream.port, "idp": idp.port}, workdir, concurrency=2)
        envoy.start()
        load = Load(envoy.listener_port, keys, args.rate, args.threads, args.hang_up)
        samples = []
        try:
            started = time.monotonic()
            load.start()
            print(f"soak: {args.rate} req/s for {args.warm_up} s warm-up + {args.seconds} s, keys rotating every {args.rotate} s", flush=True)
            next_report = started + args.report
            while (elapsed := time.monotonic() - started) < args.warm_up + args.seconds:
                keys.tick(elapsed)
                if elapsed >= args.warm_up and (not samples or time.monotonic() - samples[-1]["t"] >= 5):
                    samples.append(sample(envoy))
                if time.monotonic() >= next_report:
                    next_report += args.report
                    last = samples[-1] if samples else sample(envoy)
                    unexpected = ", ".join(f"{kind} → {status}: {n}" for (kind, status), n in load.unexpected.items())
                    print(f"  {elapsed:4.0f} s: {load.sent} sent, {sum(load.unexpected.values())} unexpected{f' ({unexpected})' if unexpected else ''}, "
                          f"{load.dropped} dropped, rss {last['rss_mib']:.1f} MiB, allocated {last['allocated_mib']:.1f} MiB, {keys.rotations} rotations", flush=True)
                time.sleep(0.1)
            load.stop()
            samples.append(sample(envoy))
            duration = time.monotonic() - started
            served = envoy.stat("http.ingress.downstream_rq_completed")
            fetches = idp.fetches
            alive = envoy.process.poll() is None
        finally:
            load.stop()
            envoy.stop()
            idp.stop()
            upstream.stop()

    def figures(key):
        values = [s[key] for s in samples]
        return {"start": values[0], "peak": max(values), "end": values[-1]}

    memory = {"rss_mib": figures("rss_mib"), "allocated_mib": figures("allocated_mib"), "heap_mib": figures("heap_mib")}
    growth = {key: round(value["end"] - value["start"], 2) for key, value in memory.items()}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "seconds": args.seconds,
        "warm_up": args.warm_up,
        "rate": args.rate,
        "rotate_s": args.rotate,
        "cache_duration_s": cache_duration_s,
        "sent": load.sent,
        "hung_up": load.hung_up,
        "hang_up_share": args.hang_up,
        "slow_idp_share": args.slow_idp,
        "achieved_rps": round(load.sent / duration, 1),
        "served_by_envoy": served,
        "dropped": load.dropped,
        "unexpected": {f"{kind} → {status}": n for (kind, status), n in load.unexpected.items()},
        "statuses": {f"{kind} → {status}": n for (kind, status), n in sorted(load.tally.items())},
        "rotations": keys.rotations,
        "jwks_fetches": fetches,
        "envoy_alive": alive,
        "memory": memory,
        "growth_mib": growth,
    }
    held = max(growth["rss_mib"], growth["allocated_mib"]) <= GROWTH_ALLOWED_MIB
    ok = alive and not load.unexpected and load.dropped == 0 and held and load.sent > 0
    result["verdict"] = "pass" if ok else "fail"

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    lines = [
        f"# meshguard soak, {result['date']}",
        "",
        f"Envoy 1.40.0, --concurrency 2, real upstream and IdP on loopback. {args.rate} req/s target "
        f"({result['achieved_rps']} achieved) for {args.seconds} s after {args.warm_up} s of warm-up; "
        f"signing key rotated every {args.rotate} s (cache_duration {cache_duration_s} s); {USERS:,} users; "
        f"{args.hang_up:.0%} of clients hang up mid-request, {args.slow_idp:.0%} of JWKS answers come after the fetch timeout.",
        "",
        f"Requests: {load.sent:,} answered as expected or not, {load.hung_up:,} more whose client hung up, "
        f"{served:,} completed by Envoy, **{load.dropped} dropped**, "
        f"**{sum(load.unexpected.values())} unexpected statuses**; {keys.rotations} key rotations, {fetches} JWKS fetches.",
        "",
        "| memory (MiB) | start | peak | end |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {v['start']:.1f} | {v['peak']:.1f} | {v['end']:.1f} |" for name, v in
          (("Envoy resident set (incl. Wasm VMs)", memory["rss_mib"]), ("Envoy allocated (tcmalloc)", memory["allocated_mib"]), ("Envoy heap", memory["heap_mib"]))),
        "",
        "| request class → status | count |",
        "|---|---:|",
        *(f"| {name} | {n:,} |" for name, n in result["statuses"].items()),
        "",
        f"Verdict: **{result['verdict']}**.",
    ]
    (out / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
