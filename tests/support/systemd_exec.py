"""A model of how systemd turns an ``ExecStart=`` line into a program's argv (systemd.service(5), "Command
lines"; src/core/load-fragment.c ``config_parse_exec``), for the command line the NixOS module writes:

1. specifiers are expanded on the whole line first (``unit_full_printf``): ``%%`` is ``%``, ``%d`` the
   credentials directory; any other (``%b`` is the boot ID, ``%n`` the unit name, ...) is replaced too,
   here by ``<%x>`` so that a test sees it;
2. the line is split into words, double- and single-quoted strings kept whole (``extract_first_word`` with
   ``EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE``): C escapes inside double quotes (JSON's escapes are a subset);
3. at start, ``$$`` in a word is ``$``, and ``$NAME``/``${NAME}`` are environment variables.
"""

from __future__ import annotations

import re

ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "\\": "\\", '"': '"', "'": "'", "/": "/"}


def specifiers(line: str, values: dict[str, str]) -> str:
    out, i = [], 0
    while i < len(line):
        if line[i] == "%" and i + 1 < len(line):
            c = line[i + 1]
            out.append("%" if c == "%" else values.get(c, f"<%{c}>"))
            i += 2
        else:
            out.append(line[i])
            i += 1
    return "".join(out)


def words(line: str) -> list[str]:
    out: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            break
        word: list[str] = []
        while i < n and not line[i].isspace():
            q = line[i]
            if q in "\"'":
                i += 1
                while i < n and line[i] != q:
                    if line[i] == "\\" and q == '"':
                        i += 1
                        if line[i] == "u":
                            word.append(chr(int(line[i + 1 : i + 5], 16)))
                            i += 5
                            continue
                        word.append(ESCAPES[line[i]])
                    else:
                        word.append(line[i])
                    i += 1
                assert i < n, f"unterminated quote in {line!r}"
                i += 1
            elif q == "\\":
                word.append(ESCAPES.get(line[i + 1], line[i + 1]))
                i += 2
            else:
                word.append(q)
                i += 1
        out.append("".join(word))
    return out


def variables(word: str, env: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1) or m.group(2), "")

    return re.sub(r"\$\$|\$\{(\w+)\}|\$(\w+)", one, word)


def argv(line: str, credentials: str, env: dict[str, str] | None = None) -> list[str]:
    """What the program started by ``ExecStart=line`` receives as its argv."""
    return [variables(w, env or {}) for w in words(specifiers(line, {"d": credentials}))]
