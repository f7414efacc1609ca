#!/usr/bin/env python3
"""Instructions per Ed25519 verify inside Envoy's V8, one candidate implementation at a time
(issue 15: EdDSA has no host path, so its verify runs in the VM).

Builds benches/ed25519-probe once per candidate (a cargo feature, or a cfg), then measures each
build under callgrind as scripts/instructions.py measures a filter: the probe verifies one fixed
valid signature `repeat` times per request, so (instructions per request at repeat 10 - at
repeat 0) / 10 is one verify. The probe answers 500 if a verify fails, and `measure` refuses a
non-200 answer: a wrong candidate is never counted. Also prints the bytes each candidate adds
to the probe's .wasm (its size less the build with no candidate).

usage: scripts/ed25519_probe.py [--requests N] [--only SUBSTRING]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

from instructions import measure  # noqa: E402
from support.envoy import meshguard_filter  # noqa: E402
from support.jose import Signer  # noqa: E402

PROBE = REPO / "benches/ed25519-probe"
BUILT = PROBE / "target/wasm32-wasip1/release/ed25519_probe.wasm"
REPEAT = 10

# (name, cargo features, extra rustc flags)
CANDIDATES = [
    ("ed25519-compact 2.6 (meshguard today)", "compact", ""),
    ("ed25519-compact 2.6, feature opt_size", "compact-opt-size", ""),
    ("curve25519-dalek 5, 32-bit backend, basepoint tables, compact's rules", "dalek", ""),
    ("curve25519-dalek 5, 32-bit backend, no tables, compact's rules", "dalek-no-tables", ""),
    ("curve25519-dalek 5, 64-bit backend (u128), basepoint tables, compact's rules", "dalek",
     '--cfg curve25519_dalek_bits="64"'),
    ("ed25519-dalek 3 verify_strict (32-bit backend, tables)", "ed25519-dalek", ""),
]


def build(features, rustflags, out):
    env = {**os.environ, "RUSTFLAGS": rustflags} if rustflags else {
        key: value for key, value in os.environ.items() if key != "RUSTFLAGS"}
    command = ["cargo", "build", "--quiet", "--target", "wasm32-wasip1", "--release"]
    if features:
        command += ["--features", features]
    subprocess.run(command, cwd=PROBE, env=env, check=True)
    shutil.copyfile(BUILT, out)
    return out.stat().st_size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--warm-up", type=int, default=10)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    token = Signer("RS256").sign(exp=int(time.time()) + 86400)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        base_size = build("", "", Path(workdir) / "none.wasm")
        for index, (name, features, rustflags) in enumerate(CANDIDATES):
            if args.only and args.only not in name:
                continue
            wasm = Path(workdir) / f"candidate{index}.wasm"
            size = build(features, rustflags, wasm)
            per_request = {}
            for repeat in (0, REPEAT):
                label = f"{name} x{repeat}"
                instructions, _ = measure(label, [meshguard_filter(str(repeat), wasm=wasm)], workdir,
                                          args.requests, token, args.warm_up)
                per_request[repeat] = instructions / args.requests
            per_verify = (per_request[REPEAT] - per_request[0]) / REPEAT
            rows.append((name, per_verify, size - base_size))
            print(f"{name}: {per_verify:,.0f} instructions/verify, +{size - base_size:,} bytes", flush=True)
    print()
    print(f"| candidate (benches/ed25519-probe, {args.requests} requests, callgrind) | instructions per verify in V8 | .wasm bytes added |")
    print("|---|---:|---:|")
    for name, per_verify, added in rows:
        print(f"| {name} | {per_verify:,.0f} | +{added:,} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
