"""A bad pluginConfig makes Envoy refuse to start, with one log line naming the JSON path and
the reason."""

import json

import pytest

from support.envoy import Envoy

LOCAL_JWKS = json.dumps({"keys": [{"kty": "oct", "kid": "k", "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]})


def good_config():
    return {
        "providers": {"corp": {"issuer": "https://idp.test", "local_jwks": {"inline": LOCAL_JWKS}}},
        "rate_limits": {"per_user": {"key": ["claim:sub"], "token_bucket": {"max_tokens": 5, "tokens_per_fill": 5, "fill_interval": "1s"}}},
        "rules": [{"name": "api", "match": {"prefix": "/"}, "requires": "corp", "rate_limits": ["per_user"]}],
    }


def with_change(change):
    config = good_config()
    change(config)
    return config


CASES = {
    "unknown top-level field": (with_change(lambda c: c.update(bogus=1)), "unknown field `bogus`"),
    "unknown provider field": (
        with_change(lambda c: c["providers"]["corp"].update(issuers="x")),
        "providers.corp.issuers: unknown field `issuers`",
    ),
    "bad duration": (
        with_change(lambda c: c["providers"]["corp"].update(clock_skew="1 sec")),
        'providers.corp.clock_skew: invalid duration "1 sec"',
    ),
    "rule names a missing provider": (
        with_change(lambda c: c["rules"][0].update(requires={"any": ["corp", "nobody"]})),
        'rules[0].requires.any[1]: provider "nobody" is not defined',
    ),
    "rule names a missing policy": (
        with_change(lambda c: c["rules"][0].update(rate_limits=["per_user", "nope"])),
        'rules[0].rate_limits[1]: rate limit "nope" is not defined',
    ),
    "empty issuer": (
        with_change(lambda c: c["providers"]["corp"].update(issuer="")),
        "providers.corp.issuer: must not be empty",
    ),
    "bad JWKS": (
        with_change(lambda c: c["providers"]["corp"].update(local_jwks={"inline": "{not json"})),
        "providers.corp.local_jwks.inline: JWKS is not valid JSON",
    ),
    "JWKS with no usable key": (
        with_change(lambda c: c["providers"]["corp"].update(local_jwks={"inline": '{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}'})),
        "providers.corp.local_jwks.inline: JWKS has no usable key",
    ),
    "unknown algorithm": (
        with_change(lambda c: c["providers"]["corp"].update(algorithms=["RS256", "none"])),
        'providers.corp.algorithms[1]: "none" is not a supported algorithm',
    ),
    "bad rate-limit key": (
        with_change(lambda c: c["rate_limits"]["per_user"].update(key=["claim:sub", "cookie:x"])),
        'rate_limits.per_user.key[1]: "cookie:x" is not a key part',
    ),
    "not JSON at all": ("providers: {}", "the configuration must be a JSON object"),
    "trailing text": ("{} {}", "trailing characters"),
}


@pytest.mark.parametrize("name", CASES)
def test_envoy_refuses_to_start_and_logs_path_and_reason(name, tmp_path):
    config, expected = CASES[name]
    envoy = Envoy(config, {"upstream": 9}, tmp_path)
    code = envoy.run_to_exit(timeout=30)
    assert code not in (None, 0), "Envoy started with a bad configuration"
    refused = [line for line in envoy.log().splitlines() if "configuration refused:" in line]
    assert len(refused) >= 1, envoy.log()[-3000:]
    assert expected in refused[0], refused[0]


def test_the_good_configuration_starts(tmp_path, upstream):
    with Envoy(good_config(), {"upstream": upstream.port}, tmp_path) as envoy:
        assert envoy.get("/anything").status_code == 401
