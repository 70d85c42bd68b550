"""Checks on the free text a caller writes (a proposal's or a run's title and description, a program.md
change message): pure, no I/O.

Titles and descriptions end up in commit messages on the research branch, in `git log`, in
terminals, logs and the dashboard. So they hold printable text only:

    one-line fields (titles, messages)   no character of Unicode category Cc (controls: NUL, ESC of
                                         ANSI sequences, VT, NEL, ...), Cf (invisible format
                                         characters: bidi overrides and isolates U+202A-202E,
                                         U+2066-2069, marks U+200E/F, U+061C, ...), Zl (U+2028),
                                         Zp (U+2029), Cs (lone surrogates)
    multi-line fields (descriptions)     the same, except that `\\n` and `\\t` are allowed

A NUL makes `git commit-tree` fail; the others can hide or reorder what a reader sees (a bidi
override), drive a terminal (ANSI escapes) or break a line where a tool does not expect it.
Each refusal raises InvalidText naming the character (U+XXXX and its Unicode name) and where it is.
"""

import unicodedata

from services.errors import InvalidText

REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "an invisible format character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Cs": "a lone surrogate",
}
MULTILINE_ALLOWED = frozenset("\n\t")
LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
# Controls have no name in the Unicode database; these are the ones a caller most likely sent.
_CONTROL_NAMES = {
    "\0": "NULL",
    "\t": "CHARACTER TABULATION",
    "\n": "LINE FEED",
    "\x0b": "LINE TABULATION",
    "\x0c": "FORM FEED",
    "\r": "CARRIAGE RETURN",
    "\x1b": "ESCAPE",
    "\x7f": "DELETE",
    "\x85": "NEXT LINE",
}


def check_one_line(text: str, field: str) -> None:
    """`text` (a title, a message) is one line of printable text; its position is a 1-based character
    index."""
    for index, char in enumerate(text):
        if _refused(char):
            fix = "it must be one line" if char in LINE_BREAKS else "remove it"
            raise InvalidText(f"{field} holds {describe(char)} at character {index + 1}; {fix}")


def check_multiline(text: str, field: str) -> None:
    """`text` (a description) is printable text in lines (`\\n`) that may hold tabs; its position is a
    1-based line and column."""
    line, column = 1, 0
    for char in text:
        column += 1
        if char == "\n":
            line, column = line + 1, 0
        elif char not in MULTILINE_ALLOWED and _refused(char):
            fix = "end lines with \\n only" if char in LINE_BREAKS else "remove it"
            raise InvalidText(f"{field} holds {describe(char)} at line {line}, column {column}; {fix}")


def describe(char: str) -> str:
    """`U+202E (RIGHT-TO-LEFT OVERRIDE, an invisible format character)`."""
    category = REFUSED_CATEGORIES.get(unicodedata.category(char), "a character")
    name = unicodedata.name(char, "") or _CONTROL_NAMES.get(char, "")
    return f"U+{ord(char):04X} ({name + ', ' if name else ''}{category})"


def _refused(char: str) -> bool:
    return unicodedata.category(char) in REFUSED_CATEGORIES
