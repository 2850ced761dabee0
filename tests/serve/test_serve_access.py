"""Tokens, roles, rate limits and safe headers of the app, in process (no network).

Every endpoint is called without a token, with a wrong, a revoked and a lower-role token, and
with the right one; a refused request stores nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat

import pytest
from serve_helpers import CLASSES, create_app_for, image_bytes, stored_nothing

from purenn.serve.access import FAILED_ATTEMPTS, OPEN_PATHS, ROUTE_ROLES
from purenn.serve.ratelimit import RateLimiter
from purenn.serve.tokens import (
    ROLES,
    TokenError,
    TokenRegistry,
    add_token,
    read_tokens,
    revoke_token,
    role_allows,
    token_hash,
)

pytest.importorskip("fastapi")


@pytest.fixture
def tokens(tmp_path) -> dict[str, str]:
    """A tokens file with one token of each role and one revoked: {name: token}."""
    path = tmp_path / "tokens.json"
    made = {role: add_token(path, role, role) for role in ROLES}
    made["revoked"] = add_token(path, "revoked", "admin")
    revoke_token(path, "revoked")
    return made


@pytest.fixture
def secured(settings, tokens, tmp_path):
    """A client of the app with tokens on."""
    from fastapi.testclient import TestClient

    settings.tokens_file = tmp_path / "tokens.json"
    with TestClient(create_app_for(settings)) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the tokens file ----------------------------------------------------------------------------
def test_the_file_keeps_only_hashes_with_mode_0600(tmp_path):
    path = tmp_path / "sub" / "tokens.json"
    token = add_token(path, "alice", "review")
    text = path.read_text()
    assert token.startswith("pnn_") and len(token) == 4 + 43 and token not in text
    assert json.loads(text)["tokens"][0]["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [t.name for t in read_tokens(path)] == ["alice"]
    assert add_token(path, "bob", "diagnose") != token


def test_names_roles_and_revocations_are_checked(tmp_path):
    path = tmp_path / "tokens.json"
    add_token(path, "alice", "review")
    with pytest.raises(TokenError, match="already has a token named 'alice'"):
        add_token(path, "alice", "admin")
    with pytest.raises(TokenError, match="role must be one of"):
        add_token(path, "bob", "root")
    with pytest.raises(TokenError, match="Received: name='a b'"):
        add_token(path, "a b", "review")
    revoke_token(path, "alice")
    with pytest.raises(TokenError, match="no active token named 'alice'"):
        revoke_token(path, "alice")
    path.write_text("{not json")
    with pytest.raises(TokenError, match="cannot read tokens file"):
        read_tokens(path)


def test_roles_are_ordered():
    assert role_allows("admin", "review") and role_allows("review", "diagnose")
    assert not role_allows("diagnose", "review") and not role_allows("review", "admin")


def test_the_registry_sees_adds_and_revocations_without_a_restart(tmp_path):
    path = tmp_path / "tokens.json"
    registry = TokenRegistry(path)
    assert registry.authenticate("pnn_anything") is None  # no file yet: nobody
    token = add_token(path, "alice", "review")
    assert registry.authenticate(token).name == "alice"
    assert registry.authenticate(token + "x") is None
    revoke_token(path, "alice")
    assert registry.authenticate(token) is None
    assert token_hash(token) in path.read_text()  # kept, marked revoked


# -- every endpoint --------------------------------------------------------------------------
def _call(client, method: str, template: str, ids: dict, headers: dict):
    path = template.format(**ids)
    if path.endswith("/feedback"):
        return client.post(path, json={"label": CLASSES[1]}, headers=headers)
    if method == "POST" and "{" not in template:  # an upload
        return client.post(path, files={"file": ("leaf.png", image_bytes(7))}, headers=headers)
    return client.request(method, path, headers=headers)


def _state(client, admin: str, settings) -> tuple:
    """Everything a request could have stored: history rows (with feedback) and image files."""
    items = client.get("/api/diagnoses", headers=bearer(admin)).json()["items"]
    files = sorted(p.name for p in settings.store_images.rglob("*") if p.is_file())
    return [(d["id"], d["feedback"], d["feedback_by"]) for d in items], files


@pytest.mark.parametrize("method,template,role,_", ROUTE_ROLES, ids=[r[1] for r in ROUTE_ROLES])
def test_every_endpoint_refuses_and_admits_as_documented(
    secured, settings, tokens, method, template, role, _
):
    admin = tokens["admin"]
    first = secured.post(
        "/api/predict", files={"file": ("a.png", image_bytes(1))}, headers=bearer(admin)
    ).json()
    ids = {"diagnosis_id": first["id"], "sha256": first["image_sha256"]}
    before = _state(secured, admin, settings)
    lower = [r for r in ROLES if not role_allows(r, role)]
    for headers, status in [
        ({}, 401),
        (bearer("pnn_wrong"), 401),
        ({"Authorization": f"Basic {tokens['admin']}"}, 401),
        (bearer(tokens["revoked"]), 401),
        *[(bearer(tokens[r]), 403) for r in lower],
    ]:
        r = _call(secured, method, template, ids, headers)
        assert r.status_code == status, (headers, r.text)
        assert r.headers["www-authenticate"].startswith('Bearer realm="purenn"')
        assert "error" in r.json()
        assert _state(secured, admin, settings) == before  # nothing stored
    for name in ROLES[ROLES.index(role) :]:
        r = _call(secured, method, template, ids, bearer(tokens[name]))
        assert r.status_code == 200, (name, r.text)
        if template.endswith("/feedback"):
            assert r.json()["feedback_by"] == name


def test_every_route_of_the_app_has_a_documented_role(secured):
    known = {(m, p) for m, p, _, _ in ROUTE_ROLES}
    for route in secured.app.routes:
        path = getattr(route, "path", "")
        if path in OPEN_PATHS or path.startswith("/page") or path.startswith("/docs"):
            continue
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD":
                assert (method, path) in known, (method, path)


def test_open_paths_need_no_token_and_refusals_store_nothing(secured, settings, tokens):
    for path in ("/", "/page/app.js", "/page/style.css", "/healthz", "/readyz", "/openapi.json"):
        assert secured.get(path).status_code == 200, path
    assert secured.get("/api/unknown").status_code == 401  # unknown paths reveal nothing
    assert secured.get("/api/unknown", headers=bearer(tokens["diagnose"])).status_code == 404
    secured.post("/api/predict", files={"file": ("a.png", image_bytes(1))})
    assert stored_nothing(secured, settings, bearer(tokens["review"]))


def test_feedback_is_attributed_and_unattributed_with_tokens_off(client, secured, tokens):
    # client (tokens off) is made before secured turns tokens on; both use one database
    d = client.post("/api/predict", files={"file": ("a.png", image_bytes(2))}).json()
    r = client.post(f"/api/diagnoses/{d['id']}/feedback", json={"label": CLASSES[0]})
    assert r.status_code == 200 and r.json()["feedback_by"] is None  # tokens off
    d = secured.post(
        "/api/predict",
        files={"file": ("a.png", image_bytes(2))},
        headers=bearer(tokens["diagnose"]),
    ).json()
    r = secured.post(
        f"/api/diagnoses/{d['id']}/feedback",
        json={"label": CLASSES[2]},
        headers=bearer(tokens["review"]),
    )
    assert r.json()["feedback"] == CLASSES[2] and r.json()["feedback_by"] == "review"


def test_repeated_wrong_tokens_from_one_address_are_slowed_down(secured, tokens):
    for _ in range(FAILED_ATTEMPTS):
        assert secured.get("/api/model", headers=bearer("pnn_guess")).status_code == 401
    r = secured.get("/api/model", headers=bearer(tokens["admin"]))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_a_broken_tokens_file_refuses_everyone(secured, tokens, tmp_path):
    (tmp_path / "tokens.json").write_text("{broken")
    r = secured.get("/api/model", headers=bearer(tokens["admin"]))
    assert r.status_code == 503 and "cannot read tokens file" in r.json()["error"]


# -- rate limits ---------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_a_burst_then_one_per_interval():
    clock = FakeClock()
    limiter = RateLimiter(6, clock=clock)  # one every 10 s after a burst of 6
    assert [limiter.take("a") for _ in range(6)] == [0] * 6
    assert limiter.take("a") == 10 and limiter.wait("a") == 10
    assert limiter.take("b") == 0  # another key has its own bucket
    clock.now = 4.0
    assert limiter.take("a") == 6
    clock.now = 10.0
    assert limiter.take("a") == 0 and limiter.take("a") == 10


def test_the_limiter_keeps_at_most_max_keys():
    limiter = RateLimiter(1, max_keys=3, clock=FakeClock())
    for key in range(1000):
        limiter.take(key)
    assert len(limiter) == 3
    assert limiter.take(999) > 0 and limiter.take(0) == 0  # 0 was evicted: a full bucket again


def test_rate_limits_answer_429_per_address(settings):
    from fastapi.testclient import TestClient

    settings.rate_limit = 3
    with TestClient(create_app_for(settings)) as c:
        upload = {"file": ("a.png", image_bytes(1))}
        codes = [c.post("/api/predict", files=upload).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = c.post("/api/explain", files=upload)
        assert r.status_code == 429 and int(r.headers["retry-after"]) == 20
        assert c.get("/api/diagnoses").status_code == 200  # reads are not limited
        assert len(c.get("/api/diagnoses").json()["items"]) == 3


# -- headers and limits --------------------------------------------------------------------------
def test_every_answer_has_the_security_headers(secured, tokens):
    for r in (
        secured.get("/"),
        secured.get("/api/model"),
        secured.get("/page/app.js"),
        secured.get("/api/model", headers=bearer(tokens["diagnose"])),
        secured.get("/nowhere", headers=bearer(tokens["diagnose"])),
    ):
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "server" not in r.headers and not any(
            "purenn" in v.lower() and any(c.isdigit() for c in v) for v in r.headers.values()
        )


def test_the_page_has_no_inline_script_or_style(client):
    page = client.get("/").text
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son\w+=", page)  # no inline event handlers
    assert all(re.search(r'src="/page/[\w.]+"', tag) for tag in re.findall(r"<script[^>]*>", page))


def test_too_many_headers_are_refused(client, settings):
    many = {f"x-h{i}": "v" for i in range(80)}
    r = client.post("/api/predict", files={"file": ("a.png", image_bytes(1))}, headers=many)
    assert r.status_code == 431
    r = client.get("/healthz", headers={"x-big": "v" * 20_000})
    assert r.status_code == 431
    assert stored_nothing(client, settings)


def test_too_many_multipart_parts_are_refused(client, settings):
    files = [("file", (f"{i}.png", image_bytes(1))) for i in range(12)]
    assert client.post("/api/predict", files=files).status_code == 400
    fields = {f"f{i}": "x" for i in range(20)}
    r = client.post("/api/predict", files={"file": ("a.png", image_bytes(1))}, data=fields)
    assert r.status_code == 400
    assert stored_nothing(client, settings)


# -- attributed feedback as training data --------------------------------------------------------
def test_export_by_reviewer_and_min_agree(settings, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from purenn.cli.main import main

    path = tmp_path / "tokens.json"
    reviewers = {name: add_token(path, name, "review") for name in ("alice", "bob", "carol")}
    settings.tokens_file = path
    votes = [(1, "alice", 0), (1, "bob", 0), (1, "carol", 1), (2, "alice", 1), (2, "bob", 2),
             (3, "alice", 0)]  # fmt: skip
    with TestClient(create_app_for(settings)) as c:
        for seed, name, label in votes:
            h = bearer(reviewers[name])
            d = c.post("/api/predict", files={"file": ("a.png", image_bytes(seed))}, headers=h)
            r = c.post(f"/api/diagnoses/{d.json()['id']}/feedback",
                       json={"label": CLASSES[label]}, headers=h)  # fmt: skip
            assert r.json()["feedback_by"] == name
    sha = {seed: hashlib.sha256(image_bytes(seed)).hexdigest() for seed in (1, 2, 3)}

    def export(*flags: str) -> dict[str, str]:
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        assert main(["diagnoses", "export", settings.db, str(out), *flags]) == 0
        return {p.stem: p.parent.name for p in out.rglob("*.png")}

    assert export("--min-agree", "2") == {sha[1]: CLASSES[0]}  # seeds 2 and 3: no agreement
    assert "2 without 2 agreeing reviewers" in capsys.readouterr().out
    assert export("--by", "alice") == {sha[1]: CLASSES[0], sha[2]: CLASSES[1], sha[3]: CLASSES[0]}
    assert export("--by", "carol") == {sha[1]: CLASSES[1]}
    assert export("--by", "bob", "carol", "--min-agree", "2") == {}  # one each: a tie
    assert export("--min-agree", "3") == {}
    assert export() == {sha[1]: CLASSES[1], sha[2]: CLASSES[2], sha[3]: CLASSES[0]}  # latest wins


def test_rate_limits_follow_a_token_across_addresses(settings, tokens, tmp_path):
    from fastapi.testclient import TestClient

    settings.tokens_file, settings.rate_limit = tmp_path / "tokens.json", 2
    app = create_app_for(settings)
    upload = {"file": ("a.png", image_bytes(1))}
    with TestClient(app, client=("192.0.2.1", 1000)) as a:
        b = TestClient(app, client=("192.0.2.2", 1000))
        one, other = bearer(tokens["diagnose"]), bearer(tokens["review"])
        assert [a.post("/api/predict", files=upload, headers=one).status_code,
                b.post("/api/predict", files=upload, headers=one).status_code,
                b.post("/api/predict", files=upload, headers=one).status_code,
                b.post("/api/predict", files=upload, headers=other).status_code,
                b.post("/api/predict", files=upload, headers=other).status_code,
                ] == [200, 200, 429, 200, 429]  # fmt: skip
        # token "diagnose" is spent; address 2 spent by two answered requests
        listed = a.get("/api/diagnoses", headers=bearer(tokens["review"])).json()["items"]
        assert len(listed) == 3
