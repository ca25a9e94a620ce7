"""Markdown and HTML from flows, made safe to put into a viewer's page.

A flow's output is untrusted: whoever wrote the flow (or the text it echoes) must not run script
in the browser of whoever watches it. So every markdown or html event is rendered here, on the
server, through a strict allow-list: tags not listed are dropped (the content of `script`,
`style` and the like with them), attributes not listed are dropped (every `on*` handler, every
`style`), and URLs keep only http(s), mailto and relative forms. The page's Content-Security-
Policy (no inline script) is a second line, not the first.
"""

from __future__ import annotations

import html
from html.parser import HTMLParser
from urllib.parse import urlsplit

from markdown_it import MarkdownIt

ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl",
        "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li",
        "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strong", "sub",
        "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
    }
)  # fmt: skip
VOID_TAGS = frozenset({"br", "hr", "img"})
DROP_CONTENT = frozenset(
    {"script", "style", "iframe", "object", "embed", "template", "noscript", "textarea",
     "select", "svg", "math", "frame", "frameset", "noembed", "xmp", "title", "head"}
)  # fmt: skip
"""Tags whose content goes with them (it is code, or would show as code's text)."""
ALLOWED_ATTRS: dict[str, frozenset[str]] = {
    "a": frozenset({"href", "title"}),
    "img": frozenset({"src", "alt", "title", "width", "height"}),
    "td": frozenset({"colspan", "rowspan", "align"}),
    "th": frozenset({"colspan", "rowspan", "align"}),
    "ol": frozenset({"start"}),
    "code": frozenset({"class"}),
}
URL_ATTRS = frozenset({"href", "src"})
SAFE_SCHEMES = frozenset({"", "http", "https", "mailto"})
MAX_DEPTH = 100
"""Nesting kept at most; deeper tags are dropped (their text stays)."""


def safe_url(value: str) -> bool:
    """Whether a URL may stand in href/src: no `javascript:`, `data:`, `vbscript:`... even
    when disguised with entities, whitespace or control characters."""
    cleaned = "".join(ch for ch in html.unescape(value) if ch > " " and ch != "\x7f")
    try:
        scheme = urlsplit(cleaned).scheme.lower()
    except ValueError:
        return False
    return scheme in SAFE_SCHEMES


class _Cleaner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.stack: list[str] = []
        self.dropping = 0
        """Depth inside a DROP_CONTENT element: text and tags in it are not kept."""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in DROP_CONTENT:
            self.dropping += 1
            return
        if self.dropping or tag not in ALLOWED_TAGS or len(self.stack) >= MAX_DEPTH:
            return
        kept = []
        allowed = ALLOWED_ATTRS.get(tag, frozenset())
        for name, value in attrs:
            if name not in allowed or value is None:
                continue
            if name in URL_ATTRS and not safe_url(value):
                continue
            if name == "class" and not value.startswith("language-"):
                continue
            kept.append(f' {name}="{html.escape(value, quote=True)}"')
        if tag == "a":
            kept.append(' rel="noopener noreferrer nofollow"')
        self.out.append(f"<{tag}{''.join(kept)}>")
        if tag not in VOID_TAGS:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in DROP_CONTENT:
            return
        self.handle_starttag(tag, attrs)
        if tag not in VOID_TAGS and self.stack and self.stack[-1] == tag:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in DROP_CONTENT:
            self.dropping = max(0, self.dropping - 1)
            return
        if self.dropping or tag not in self.stack:
            return
        while self.stack:  # close what was left open inside it
            open_tag = self.stack.pop()
            self.out.append(f"</{open_tag}>")
            if open_tag == tag:
                return

    def handle_data(self, data: str) -> None:
        if not self.dropping:
            self.out.append(html.escape(data, quote=False))

    def result(self) -> str:
        self.close()
        return "".join(self.out) + "".join(f"</{t}>" for t in reversed(self.stack))


def clean_html(text: str) -> str:
    """`text` with only allow-listed tags, attributes and URLs left; everything else escaped or
    dropped. Comments, doctypes and processing instructions are dropped."""
    cleaner = _Cleaner()
    cleaner.feed(text)
    return cleaner.result()


_MD = MarkdownIt("commonmark", {"html": True, "linkify": False}).enable("table")


def render_markdown(text: str) -> str:
    """Markdown (with inline html, as flows write it) to sanitized HTML."""
    return clean_html(_MD.render(text))
