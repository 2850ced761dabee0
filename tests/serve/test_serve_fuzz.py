"""A property-based fuzz of the upload and feedback endpoints (Hypothesis), in process.

Malformed multipart bodies (broken boundaries, odd part headers, truncated images, thousands of
fields), odd request headers, and feedback bodies of invalid UTF-8, wrong JSON and odd ids: the
app answers every one with a 2xx or a 4xx, never a 5xx, and a rejected request stores nothing
(no history row, no feedback, no file). Bounded: a fixed number of examples, each with a deadline.
The figure (requests tried, 5xx answers) is printed: ``pytest -s tests/serve/test_serve_fuzz.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from urllib.parse import quote

import pytest
from serve_helpers import CLASSES, create_app_for, image_bytes

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

UPLOAD_EXAMPLES = 300
FEEDBACK_EXAMPLES = 200
FUZZ = dict(
    deadline=5000,
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
PNG = image_bytes(5)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)


@pytest.fixture(scope="module")
def fuzz_client(model_file, tmp_path_factory):
    from fastapi.testclient import TestClient

    from purenn.serve.app import Settings

    folder = tmp_path_factory.mktemp("fuzz")
    app_settings = Settings(
        model_path=model_file,
        db=str(folder / "history.db"),
        max_upload_bytes=200_000,
        store_images=folder / "images",
    )
    with TestClient(create_app_for(app_settings), raise_server_exceptions=False) as c:
        yield c, app_settings


def stored(client, app_settings) -> tuple:
    """Everything a request could store: history rows with their feedback, and image files."""
    rows = client.app.state.store.newest(200)
    files = sorted(str(p) for p in app_settings.store_images.rglob("*") if p.is_file())
    return [(d.id, d.feedback_label, d.feedback_at) for d in rows], files


def raw(headers: dict[str, str]) -> dict[bytes, bytes]:
    """Headers as bytes (latin-1), as a client on the wire may send them."""
    return {k.encode("latin-1"): v.encode("latin-1") for k, v in headers.items()}


def check(client, app_settings, tally: Counter, send) -> None:
    """Send one request; 5xx is counted (and fails the test), a 4xx must store nothing."""
    before = stored(client, app_settings)
    response = send()
    tally["requests"] += 1
    status = response.status_code
    tally[status] += 1
    if status >= 500:
        tally["5xx"] += 1
    assert 200 <= status < 500 and status // 100 != 3, (status, response.text[:300])
    if status >= 400:
        assert stored(client, app_settings) == before, status


def describe(tally: Counter) -> str:
    by_status = ", ".join(
        f"{k}: {tally[k]}" for k in sorted(k for k in tally if isinstance(k, int))
    )
    return f"{tally['requests']} requests, {tally['5xx']} answered 5xx ({by_status})"


# -- multipart -----------------------------------------------------------------------------------
BOUNDARY = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=70)
PAYLOAD = st.one_of(
    st.binary(max_size=2000),
    st.just(PNG),
    st.integers(1, len(PNG) - 1).map(lambda n: PNG[:n]),  # a truncated image
    st.binary(max_size=64).map(lambda b: PNG[:50] + b + PNG[50:]),  # a corrupted one
)
PART_HEADERS = st.one_of(
    st.tuples(st.sampled_from(["file", "files", "", "fi\x00le", "f" * 300]), TEXT).map(
        lambda nf: f'Content-Disposition: form-data; name="{nf[0]}"; filename="{nf[1]}"'
    ),
    st.just('Content-Disposition: form-data; name="file"'),  # a text field, not a file
    HEADER_TEXT.map(lambda h: f"Content-Disposition: {h}"),
    HEADER_TEXT.map(lambda h: f"X-{h}: {h}"),
)


@st.composite
def multipart(draw) -> tuple[dict, bytes]:
    boundary = draw(BOUNDARY)
    sep = b"--" + boundary.encode()
    parts = []
    if draw(st.booleans()):  # a well-formed file part, so that the rest is what is odd
        head = b'Content-Disposition: form-data; name="file"; filename="leaf.png"'
        parts.append(sep + b"\r\n" + head + b"\r\n\r\n" + draw(PAYLOAD) + b"\r\n")
    for _ in range(draw(st.integers(0, 4))):
        headers = draw(st.lists(PART_HEADERS, max_size=3))
        if draw(st.booleans()):
            headers.append(f"Content-Type: {draw(HEADER_TEXT)}")
        head = "\r\n".join(headers).encode("utf-8", "surrogateescape")
        parts.append(sep + b"\r\n" + head + b"\r\n\r\n" + draw(PAYLOAD) + b"\r\n")
    # None, beyond the part limit, far beyond it, and past the upload size cap.
    fields = draw(st.sampled_from([0, 0, 0, 0, 9, 50, 1500, 5000]))
    parts += [sep + b'\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i
              for i in range(fields)]  # fmt: skip
    body = b"".join(parts) + draw(st.sampled_from([sep + b"--\r\n", b"", sep, b"--\r\n"]))
    if draw(st.booleans()):
        body = draw(st.binary(max_size=20)) + body  # garbage before the first boundary
    declared = draw(st.sampled_from([boundary, boundary, boundary, boundary + "x", "", None]))
    content_type = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={declared}",
                f"multipart/form-data; boundary={declared}",
                f'multipart/form-data; boundary="{declared}"',
                "multipart/form-data",
                "application/octet-stream",
                "text/plain; charset=utf-8",
            ]
        )
    )
    return {"content-type": content_type}, body


HEADER_NAME = st.text(
    st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=1, max_size=20
)
ODD_HEADERS = st.one_of(
    st.dictionaries(HEADER_NAME.map(lambda n: "x-" + n), HEADER_TEXT.map(str.strip), max_size=10),
    st.sampled_from(
        [
            {"authorization": "Bearer \xff\xfe"},
            {"accept": "*/*" * 6000},  # past the header-size limit
            {f"x-h{i}": "v" for i in range(70)},  # past the header-count limit
            {"content-length": "12"},  # a lie
            {"transfer-encoding": "gzip"},
        ]
    ),
)


def test_fuzz_upload_endpoints_never_answer_5xx(fuzz_client):
    client, app_settings = fuzz_client
    tally: Counter = Counter()

    @settings(max_examples=UPLOAD_EXAMPLES, **FUZZ)
    @given(
        path=st.sampled_from(["/api/predict", "/api/explain", "/api/predict?top_k=0",
                              "/api/predict?top_k=99999999999999999999", "/api/explain?method=x"]),
        request=multipart(),
        odd=ODD_HEADERS,
    )  # fmt: skip
    def run(path, request, odd):
        headers, body = request
        check(client, app_settings, tally,
              lambda: client.post(path, content=body, headers=raw({**odd, **headers})))  # fmt: skip

    run()
    print(f"\nfuzz uploads: {describe(tally)}")
    assert tally["requests"] >= UPLOAD_EXAMPLES and tally["5xx"] == 0


# -- feedback ------------------------------------------------------------------------------------
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=10,
)
FEEDBACK_BODY = st.one_of(
    st.binary(max_size=200),  # mostly invalid UTF-8
    st.binary(max_size=40).map(lambda b: b'{"label": "' + b + b'"}'),
    JSON_VALUE.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.just("label"), JSON_VALUE | st.sampled_from(CLASSES)).map(
        lambda d: json.dumps(d).encode()
    ),
    st.just(b'{"label": "' + b"x" * 300_000 + b'"}'),
    st.sampled_from(CLASSES).map(lambda label: json.dumps({"label": label}).encode()),
)
DIAGNOSIS_ID = st.one_of(
    st.integers(-(2**70), 2**70).map(str), TEXT.filter(lambda t: t not in ("", ".", ".."))
)


def test_fuzz_feedback_never_answers_5xx(fuzz_client):
    client, app_settings = fuzz_client
    real = client.post("/api/predict", files={"file": ("a.png", image_bytes(11))}).json()["id"]
    tally: Counter = Counter()

    @settings(max_examples=FEEDBACK_EXAMPLES, **FUZZ)
    @given(
        diagnosis=st.one_of(st.just(str(real)), DIAGNOSIS_ID),
        body=FEEDBACK_BODY,
        content_type=st.sampled_from(["application/json", "application/json; charset=latin-1",
                                      "text/plain", "", "multipart/form-data; boundary=x"]),
        odd=ODD_HEADERS,
    )  # fmt: skip
    def run(diagnosis, body, content_type, odd):
        path = f"/api/diagnoses/{quote(diagnosis, safe='')}/feedback"
        headers = {**odd, "content-type": content_type}
        check(client, app_settings, tally,
              lambda: client.post(path, content=body, headers=raw(headers)))  # fmt: skip

    run()
    print(f"\nfuzz feedback: {describe(tally)}")
    assert tally["requests"] >= FEEDBACK_EXAMPLES and tally["5xx"] == 0
