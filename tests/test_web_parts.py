"""The web panel's pure parts: the sanitizer against hostile flow output, and forms generated
from JSON schemas and read back (no bus, no browser: tests/test_web.py has those)."""

from __future__ import annotations

import re
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from kodo_bus.errors import FieldProblem
from kodo_bus.web import forms
from kodo_bus.web.sanitize import clean_html, render_markdown, safe_url

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<img src="x" onerror="alert(1)">',
    "<svg onload=alert(1)><circle/></svg>",
    '<a href="javascript:alert(1)">x</a>',
    '<a href="  JaVa&#x09;ScRiPt:alert(1)">x</a>',
    '<a href="&#106;avascript:alert(1)">x</a>',
    '<iframe src="javascript:alert(1)"></iframe>',
    '<div style="background:url(javascript:alert(1))" onclick="alert(1)">d</div>',
    '<img src="data:text/html;base64,PHNjcmlwdD4=">',
    "<math><mtext><script>alert(1)</script></mtext></math>",
    "<scr<script>ipt>alert(1)</script>",
    '<p title="a" onmouseover="alert(1)">p</p>',
    "<!--<script>alert(1)</script>-->",
    "<object data=x></object><embed src=x>",
    "<body onload=alert(1)>",
    '<form action="javascript:alert(1)"><button>b</button></form>',
]


@pytest.mark.parametrize("payload", HOSTILE)
def test_sanitizer_leaves_no_script(payload: str) -> None:
    for out in (clean_html(payload), render_markdown(payload)):
        lowered = out.lower()
        assert "<script" not in lowered
        assert not re.search(r"<[^>]*\son\w+\s*=", lowered), out
        assert not re.search(r"<[^>]*(href|src)\s*=\s*\"\s*(javascript|data|vbscript):", lowered)
        for tag in ("iframe", "svg", "object", "embed", "form", "math", "body"):
            assert f"<{tag}" not in lowered, out


def test_sanitizer_keeps_what_is_safe() -> None:
    out = clean_html(
        '<h2>T</h2><p>a <b>b</b> <a href="https://x.org/a?b=1&c=2" title="t">l</a></p>'
        '<table><tr><td colspan="2">c</td></tr></table><img src="/i.png" alt="i">'
    )
    assert "<h2>T</h2>" in out and "<b>b</b>" in out
    assert 'href="https://x.org/a?b=1&amp;c=2"' in out and 'rel="noopener' in out
    assert '<td colspan="2">c</td>' in out and '<img src="/i.png" alt="i">' in out
    md = render_markdown("# Hi\n\n**bold** and `code`\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert "<h1>Hi</h1>" in md and "<strong>bold</strong>" in md and "<td>1</td>" in md


def test_sanitizer_closes_and_escapes() -> None:
    assert clean_html("<b>open <i>both") == "<b>open <i>both</i></b>"
    assert clean_html("1 < 2 & </p> 3") == "1 &lt; 2 &amp;  3"
    assert not safe_url("java\nscript:x") and safe_url("/rel") and safe_url("mailto:a@b")


class Inner(BaseModel):
    depth: int = Field(default=3, ge=1, le=9, description="How deep")


class Everything(BaseModel):
    name: str = Field(description="Who", max_length=10)
    count: int = Field(default=2, ge=1, le=5)
    ratio: float = 0.5
    flag: bool = True
    colour: Literal["red", "blue"] = "blue"
    words: list[str] = ["a", "b"]
    numbers: list[int] = Field(default_factory=list)
    maybe: int | None = None
    inner: Inner = Field(default_factory=Inner)
    blob: dict[str, int] = Field(default_factory=dict)


def test_form_from_schema_and_back() -> None:
    schema = Everything.model_json_schema()
    fields = forms.fields_of(schema)
    kinds = {f.path: f.kind for f in fields}
    assert kinds == {
        "name": "text",
        "count": "integer",
        "ratio": "number",
        "flag": "boolean",
        "colour": "enum",
        "words": "list",
        "numbers": "list",
        "maybe": "integer",
        "inner": "object",
        "blob": "json",
    }
    html = forms.render(fields)
    assert 'min="1"' in html and 'max="5"' in html and "Who" in html
    assert '<option value="&quot;blue&quot;" selected>blue</option>' in html
    assert 'name="in.inner.depth"' in html and "How deep" in html
    assert ">a\nb</textarea>" in html and "checked" in html
    form = {
        "in.name": "Ada",
        "in.count": "4",
        "in.ratio": "0.25",
        "in.colour": '"red"',
        "in.words": "x\n\ny\n",
        "in.numbers": "1\n2",
        "in.maybe": "",
        "in.inner.depth": "7",
        "in.blob": '{"k": 1}',
    }  # flag unchecked: absent
    data = forms.parse(fields, form)
    assert data == {
        "name": "Ada",
        "count": 4,
        "ratio": 0.25,
        "flag": False,
        "colour": "red",
        "words": ["x", "y"],
        "numbers": [1, 2],
        "inner": {"depth": 7},
        "blob": {"k": 1},
    }
    assert Everything.model_validate(data).inner.depth == 7
    assert forms.parse(fields, {**form, "in.count": "lots"})["count"] == "lots"  # node names it


def test_problems_land_at_their_fields() -> None:
    fields = forms.fields_of(Everything.model_json_schema())
    placed, rest = forms.problems_by_field(
        fields,
        [
            FieldProblem("count", "too big"),
            FieldProblem("inner.depth", "too deep"),
            FieldProblem("words.1", "bad word"),
            FieldProblem("nope", "unknown input"),
        ],
    )
    assert placed == {"count": ["too big"], "inner.depth": ["too deep"], "words": ["bad word"]}
    assert rest == ["nope: unknown input"]
    html = forms.render(fields, {"in.count": "9"}, placed)
    assert 'value="9"' in html and "too deep" in html and 'aria-invalid="true"' in html


def test_a_login_secret_is_checked_and_never_shown() -> None:
    import nkeys  # type: ignore[import-untyped]
    from nats.aio.client import RawCredentials

    from kodo_bus.errors import ConfigError
    from kodo_bus.web.sessions import Secret

    seed = nkeys.encode_seed(bytes(range(32)), nkeys.PREFIX_BYTE_USER).decode()
    secret = Secret.of("nkey", f"  {seed}\n")
    assert secret.options() == {"nkeys_seed_str": seed}
    assert seed not in repr(secret) and seed not in str(secret)
    broken = seed[:-2] + ("AA" if not seed.endswith("AA") else "BB")  # its checksum fails
    for kind, text in (("nkey", broken), ("nkey", "SUshort"), ("creds", seed), ("token", "x")):
        with pytest.raises(ConfigError) as caught:
            Secret.of(kind, text)
        assert seed not in str(caught.value)
    creds = (
        "-----BEGIN NATS USER JWT-----\neyJhbGciOi.x.y\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
    options = Secret.of("creds", creds).options()
    assert isinstance(options["user_credentials"], RawCredentials)


def test_uploaded_file_names_are_one_path_part() -> None:
    from kodo_bus.web.uploads import NAME_MAX, safe_name

    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\Users\\x\\report.csv") == "report.csv"
    assert safe_name("..") == "upload" and safe_name("") == "upload"
    long = safe_name("a" * 500 + ".csv")
    assert len(long) <= NAME_MAX and long.endswith(".csv")


def test_a_file_input_is_a_file_field() -> None:
    from kodo_bus.models import File

    class WithFile(BaseModel):
        data: File = Field(description="CSV")
        note: str = ""

    fields = forms.fields_of(WithFile.model_json_schema())
    assert [f.kind for f in fields] == ["file", "text"]
    assert forms.file_fields(fields) == ["data"]
    assert 'type="file"' in forms.render(fields) and 'name="in.data"' in forms.render(fields)
    assert forms.parse(fields, {"in.data": "x", "in.note": "n"}) == {"note": "n"}


async def test_uploads_past_the_bound_at_once_are_answered_503() -> None:
    """Each posted form with files may put twice the upload bound on disk: the panel takes
    `UPLOADS_AT_ONCE` of them at once, the next is refused until one is removed (review)."""
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    from kodo_bus.web import uploads

    body = (
        b'--b\r\nContent-Disposition: form-data; name="f"; filename="a.txt"\r\n\r\nabc\r\n--b--\r\n'
    )

    def request() -> Request:
        sent = False

        async def receive() -> dict[str, object]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        headers = [(b"content-type", b"multipart/form-data; boundary=b")]
        return Request({"type": "http", "method": "POST", "headers": headers}, receive)

    held = [await uploads.read(request(), 1024, ["f"]) for _ in range(uploads.UPLOADS_AT_ONCE)]
    assert all(p.files["f"].read_bytes() == b"abc" for p in held)
    with pytest.raises(HTTPException) as refused:
        await uploads.read(request(), 1024, ["f"])
    assert refused.value.status_code == 503
    await held.pop().remove()
    again = await uploads.read(request(), 1024, ["f"])
    for posted in [*held, again]:
        await posted.remove()
    assert not uploads._uploading
