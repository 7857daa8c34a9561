#!/usr/bin/env python3
"""The chart README's table of values, generated from values.yaml.

Every key of values.yaml carries a `# --` comment (a section key may carry
none when every key under it does); the README holds, between the markers
below, one row per documented key with its default and that comment.

    chart-readme-check.py CHART           fail when a key lacks its comment or
                                          the README's table is not the generated one
    chart-readme-check.py CHART --write   rewrite the README's table
"""
import json
import re
import sys
from pathlib import Path

import yaml

BEGIN = "<!-- values:begin (scripts/chart-readme-check.py --write) -->"
END = "<!-- values:end -->"
KEY = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_.-]*):(.*)$")


def documented_keys(text):
    """(path, description) of each `# --` key in order, and the keys lacking one."""
    stack, comment, out, missing = [], [], [], []
    covered = None  # path of a documented key whose children need no comment
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            body = stripped.lstrip("#").strip()
            if body.startswith("--"):
                comment = [body[2:].strip()]
            elif comment:
                comment.append(body)
            continue
        match = KEY.match(line)
        if not match:
            if not stripped:
                comment = comment if comment else []
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if covered and path.startswith(covered + "."):
            comment = []
            continue
        covered = None
        is_section = rest.strip() == ""
        if comment:
            out.append((path, " ".join(comment)))
            covered = path
        elif not is_section:
            missing.append(path)
        comment = []
    return out, missing


def lookup(values, path):
    node = values
    for part in path.split("."):
        node = node[part]
    return node


def table(chart):
    text = (chart / "values.yaml").read_text()
    values = yaml.safe_load(text)
    keys, missing = documented_keys(text)
    rows = ["| Key | Default | Description |", "|---|---|---|"]
    for path, description in keys:
        default = json.dumps(lookup(values, path), separators=(", ", ": "))
        description = description.replace("|", "\\|")
        rows.append(f"| `{path}` | `{default}` | {description} |")
    return "\n".join(rows), missing


def main():
    chart = Path(sys.argv[1])
    readme = chart / "README.md"
    generated, missing = table(chart)
    if missing:
        sys.exit("values.yaml keys without a `# --` comment: " + ", ".join(missing))
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{readme} lacks the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    current, tail = rest.split(END, 1)
    if "--write" in sys.argv[2:]:
        readme.write_text(f"{head}{BEGIN}\n{generated}\n{END}{tail}")
        return
    if current.strip() != generated.strip():
        sys.exit(f"{readme}: the values table differs from values.yaml; "
                 f"run scripts/chart-readme-check.py {chart} --write")


if __name__ == "__main__":
    main()
