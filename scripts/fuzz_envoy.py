#!/usr/bin/env python3
"""The request fuzzer against real Envoy (tests/support/request_fuzzer.py), for as long as asked:
random methods, paths, header names and header bytes over HTTP/1.1 and HTTP/2, to Envoy running
meshguard with every feature on. Prints the seed, requests per second and what the answers
were; exits 1 with the seed and the offending requests on any failure.

    scripts/fuzz_envoy.py --seconds 300            # a long run, random seed
    scripts/fuzz_envoy.py --seed S --replay I      # request I of seed S again, on a fresh Envoy"""

import argparse
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.request_fuzzer import Fuzzer, Target  # noqa: E402
from support.servers import Upstream  # noqa: E402
from support.wire import Http1, Http2  # noqa: E402


def replay(fuzzer, index):
    case = fuzzer.request(index)
    print(case.describe(full=True))
    port = fuzzer.target.envoy.listener_port
    response = fuzzer.send(case, {"http1": Http1(port), "http2": Http2(port)})
    print(f"answer: {response.describe()}")
    problem = fuzzer.problem(case, response)
    failures = fuzzer.target.envoy.vm_failures()
    print(f"verdict: {problem or 'as specified'}")
    print("\n".join(f"Envoy's log: {line}" for line in failures))
    return 1 if problem or failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=8, help="connections at once (default 8)")
    parser.add_argument("--replay", type=int, default=None, metavar="INDEX", help="send request INDEX of --seed again and stop")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"request fuzzer seed {seed}", flush=True)
    upstream = Upstream().start()
    try:
        with tempfile.TemporaryDirectory(prefix="meshguard-fuzz-") as workdir, Target(workdir, upstream.port) as target:
            fuzzer = Fuzzer(target, seed)
            if args.replay is not None:
                return replay(fuzzer, args.replay)
            outcome = fuzzer.run(args.seconds, workers=args.workers)
            print(outcome.summary())
            if outcome.failed:
                print(outcome.report(seed))
                return 1
            return 0
    finally:
        upstream.stop()


if __name__ == "__main__":
    sys.exit(main())
