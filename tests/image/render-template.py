#!/usr/bin/env python3
"""Render a dmp-contained template the way the supervisor does (docs/CONFIG.md, Interpolation).

    ${VAR}            value of VAR; an unset VAR is an error naming it
    ${VAR:-default}   default when VAR is unset or empty
    $$                a literal $

Usage: render-template.py SRC DEST    (variables from the environment)
"""
import os
import re
import sys

TOKEN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def render(text, env):
    missing = []

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            missing.append(name)
            return ""
        return value

    out = TOKEN.sub(sub, text)
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
