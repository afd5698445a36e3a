"""User text inside page elements that render Markdown.

st.error, st.warning, st.info, st.caption, st.markdown and their kin interpret Markdown (images,
links, emphasis, headings, math) and Streamlit has no plain-text option for them. Every string that
carries user-controlled text (a model name or path, a query value, a sequence id, a file name, an
error message quoting one) goes through ``plain`` before it reaches one of them.
"""

from __future__ import annotations

import re

# CommonMark lets a backslash escape every ASCII punctuation character, and an escaped one is always
# literal text: no image, link, emphasis, HTML tag, math or directive can start from it.
_ASCII_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def plain(text: object) -> str:
    """``text`` as Markdown source that renders as exactly ``text``: every ASCII punctuation character
    backslash-escaped (so ``![x](http://e/x.png)`` shows those characters and fetches nothing)."""
    return _ASCII_PUNCTUATION.sub(r"\\\1", str(text))


def unescaped(markdown: str) -> str:
    """The literal text ``plain`` escaped (for tests and comparisons): backslash escapes removed."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)
