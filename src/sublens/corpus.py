"""General-domain English text for perplexity.

Default corpus: the English Wikipedia sample (CC BY-SA) that ships inside the `gensim` wheel
as test data, read directly from the installed package (gensim itself is never imported),
with wiki markup stripped to plain paragraphs. Any UTF-8 text file can be given instead.
"""

from __future__ import annotations

import bz2
import functools
import html
import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from sublens.errors import SublensError

WIKI_SAMPLE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
GENSIM_PIP = "pip install --no-deps gensim==4.4.0"

_NESTED = (re.compile(r"\{\{[^{}]*\}\}"), re.compile(r"\{\|[^{}]*?\|\}", re.S))
_RULES = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>]*/>"), ""),
    (re.compile(r"<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):[^\]]*\]\]", re.I), ""),
    (re.compile(r"\[\[[^\]|]*\|([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[\[([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://\S+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"\[https?://\S+\]"), ""),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), ""),
    (re.compile(r"^[*#:;].*$", re.M), ""),
    (re.compile(r"[ \t]+"), " "),
]


def wiki_sample_path() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise SublensError(
            "The default perplexity corpus is the Wikipedia sample inside the gensim wheel, and "
            f"gensim is not installed. Install it with `{GENSIM_PIP}`, or give a text file "
            "(ppl_corpus=PATH)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / WIKI_SAMPLE


def strip_wiki_markup(text: str) -> str:
    text = html.unescape(text)
    for pattern in _NESTED:  # templates and tables nest: strip innermost first, repeatedly
        previous = None
        while previous != text:
            previous, text = text, pattern.sub("", text)
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    # Short lines are list/infobox residue; "]]" marks a caption whose nested link survived.
    paragraphs = [p.strip() for p in text.split("\n") if len(p.strip()) > 80 and "]]" not in p]
    return "\n".join(paragraphs)


@functools.lru_cache(maxsize=1)
def _wikipedia_text(path: Path) -> str:
    """The sample's plain text, parsed once per process: decompressing and stripping it takes
    ~1.4 s, and a run measures perplexity many times (every student, every pruned model)."""
    return "\n\n".join(wikipedia_articles(path))


def wikipedia_articles(path: Path | None = None) -> list[str]:
    """Plain-text articles of the Wikipedia sample (redirects dropped)."""
    source = path or wiki_sample_path()
    articles = []
    with bz2.open(source, "rb") as handle:
        for _, element in ET.iterparse(handle):
            if element.tag.endswith("}text") and element.text and not element.text.startswith("#REDIRECT"):
                plain = strip_wiki_markup(element.text)
                if plain:
                    articles.append(plain)
            if element.tag.endswith("}page"):
                element.clear()
    return articles


def load_text(corpus: str = "wikipedia") -> str:
    """The perplexity text: 'wikipedia' (the gensim sample) or a path to a UTF-8 text file."""
    if corpus == "wikipedia":
        return _wikipedia_text(wiki_sample_path())
    path = Path(corpus).expanduser()
    if not path.is_file():
        raise SublensError(f"Perplexity corpus {corpus!r} is neither 'wikipedia' nor an existing text file.")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise SublensError(f"Perplexity corpus {corpus!r} is empty.")
    return text
