#!/usr/bin/env python3
"""Render a dmp-contained template the way the supervisor does (docs/CONFIG.md, Interpolation).

    ${VAR}            value of VAR; an unset VAR is an error naming it
    ${VAR:-default}   default when VAR is unset or empty (the default may hold ${...})
    $$                a literal $

Usage: render-template.py SRC DEST    (variables from the environment)
"""
import os
import re
import sys

def expand(text, env, missing):
    """${VAR}, ${VAR:-default} (the default may itself hold ${...}), $$."""
    out, i = [], 0
    while True:
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        if text.startswith("$$", j):
            out.append("$")
            i = j + 2
        elif text.startswith("${", j):
            depth, k = 0, j + 2
            while k < len(text):
                if text[k] == "{":
                    depth += 1
                elif text[k] == "}":
                    if depth == 0:
                        break
                    depth -= 1
                k += 1
            inner = text[j + 2:k]
            name, sep, default = inner.partition(":-")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise SystemExit("render-template: bad variable name %r" % name)
            value = env.get(name)
            if sep:
                out.append(value if value else expand(default, env, missing))
            elif value is None:
                missing.append(name)
            else:
                out.append(value)
            i = k + 1
        else:
            out.append("$")
            i = j + 1


def render(text, env):
    missing = []
    out = expand(text, env, missing)
    if missing:
        raise SystemExit("render-template: unset variable(s) without default: " + ", ".join(sorted(set(missing))))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        text = f.read()
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        f.write(render(text, os.environ))
