"""`make soak` keeps working: a 20-second run of the soak against real Envoy, with one key
rotation under load and clients hanging up mid-request, ends with every request answered as its
kind should be. The ten-minute figures come from `make soak`, not from here."""

import json
import subprocess
import sys

from support.envoy import REPO


def test_a_short_soak_rotates_a_key_under_load_without_a_wrong_answer(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "soak.py"), "--seconds", "16", "--warm-up", "4", "--rate", "200",
         "--threads", "4", "--rotate", "9", "--hang-up", "0.1", "--slow-idp", "0", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["unexpected"] == {}, result
    assert result["dropped"] == 0
    assert result["rotations"] >= 1
    assert result["hung_up"] > 0, "clients left mid-request"
    # No slow IdP answers here: with keys rotating every 9 s there is too little time for the
    # lease's back-off to retry a late answer before the new key signs (`make soak` has 20 s).
    assert result["statuses"]["fresh → 200"] > 0 and result["statuses"]["forged → 401"] > 0
    assert result["served_by_envoy"] >= result["sent"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| Envoy resident set" in (tmp_path / "soak.md").read_text()
