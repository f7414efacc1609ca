"""`make run` works: the demo starts, and the curl lines it prints give the statuses it says:
allow, deny and 429, and authorization: a missing scope, a deny rule, a dry run, a CORS preflight."""

import json
import subprocess

from support.envoy import REPO


def test_make_run_demo_shows_allow_and_deny():
    result = subprocess.run([str(REPO / "scripts" / "run.sh"), "--check"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for name, status in [("allowed", 200), ("no-token", 401), ("expired", 401), ("wrong-audience", 403), ("no-rule", 403), ("rate-limited", "200 200 200 429"), ("rate-limit-headers", 429),
                         ("missing-scope", 403), ("delete-denied", 403), ("delete-as-admin", 200), ("dry-run", 200), ("cors-preflight", 200)]:
        assert f"ok   {name}: {status}" in result.stdout
    assert "curl -i http://127.0.0.1:10000/api/orders -H 'Authorization: Bearer ey" in result.stdout

    # The shipped access-log example: Envoy's own log carries meshguard's decision.
    entries = [json.loads(line) for line in (REPO / ".run" / "access.log").read_text().splitlines()]
    decisions = {json.loads(entry["meshguard"])["decision"] for entry in entries if entry["meshguard"]}
    assert {"allowed", "unauthenticated", "forbidden", "rate_limited"} <= decisions
    # Authorization shows in the same record: the deny rule by name, the dry run that let a
    # request through, the scope the reports rule wants.
    authz = [json.loads(entry["meshguard"]).get("authz") for entry in entries if entry["meshguard"]]
    assert {"decision": "denied", "rule": "deletes-need-admin", "principal": "https://idp.meshguard.test/alice"} in authz, authz
    assert any(a and a["decision"] == "dry_run_denied" and a["rule"] == "api" and a["condition"] == "rules[3].when[0]: scopes" for a in authz), authz
    assert any(a and a["decision"] == "denied" and a["rule"] == "reports" for a in authz), authz
    assert all("?" not in entry["path"] for entry in entries)
