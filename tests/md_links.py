"""Check every internal link and anchor of Markdown files (GitHub's rules).

    python tests/md_links.py ROOT FILE.md [FILE.md ...]   (tests/test_docs_links.py runs it)

For each link `[text](target)`, reference link `[text][label]` / `[label]` with a
definition `[label]: target`, outside fenced code blocks and inline code:
- an http(s) / mailto target is listed, not fetched;
- a relative path must exist (file or directory), relative to the linking file;
- an anchor (`#x`, `file.md#x`) must be a heading's GitHub slug in that file
  (lower case; characters other than letters, digits, spaces, `-` and `_` removed;
  spaces to `-`; repeats get `-1`, `-2`, ...).
Prints each problem and a summary; exit status 1 on any problem.
"""
import os
import re
import sys
import unicodedata

FENCE = re.compile(r"^\s{0,3}(```|~~~)")


def strip_code(lines):
    """Lines with fenced blocks blanked and inline code spans removed."""
    out, fenced = [], False
    for line in lines:
        if FENCE.match(line):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else re.sub(r"`[^`]*`", "", line))
    return out


def slug(text):
    text = re.sub(r"<[^>]+>", "", text)                 # html tags
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: their text
    text = text.strip().lower()
    keep = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in " -_" or cat[0] in "LN":
            keep.append(ch)
    return "".join(keep).replace(" ", "-")


_anchor_cache = {}


def anchors(path):
    if path in _anchor_cache:
        return _anchor_cache[path]
    seen, result = {}, set()
    fenced = False
    for line in open(path, encoding="utf-8").read().split("\n"):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        s = slug(m.group(2))
        n = seen.get(s, 0)
        seen[s] = n + 1
        result.add(s if n == 0 else f"{s}-{n}")
    _anchor_cache[path] = result
    return result


LINK = re.compile(r"(?<!!)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
IMG = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
REFDEF = re.compile(r"^\s{0,3}\[([^\]]+)\]:\s*(\S+)")
REFUSE = re.compile(r"\[((?:[^\[\]]|\[[^\]]*\])+)\]\[([^\]]*)\]")


def check(root, md):
    problems, external, count = [], [], 0
    raw = open(md, encoding="utf-8").read().split("\n")
    lines = strip_code(raw)
    defs = {}
    for line in lines:
        m = REFDEF.match(line)
        if m:
            defs[m.group(1).lower()] = m.group(2)
    targets = []
    for no, line in enumerate(lines, 1):
        if REFDEF.match(line):
            targets.append((no, REFDEF.match(line).group(2)))
            continue
        for m in LINK.finditer(line):
            targets.append((no, m.group(2)))
        for m in IMG.finditer(line):
            targets.append((no, m.group(1)))
        for m in REFUSE.finditer(line):
            label = (m.group(2) or m.group(1)).lower()
            if label not in defs:
                problems.append(f"{md}:{no}: reference [{label}] has no definition")
    here = os.path.dirname(md)
    for no, t in targets:
        count += 1
        if re.match(r"^[a-z]+:", t):
            external.append(t)
            continue
        path, _, frag = t.partition("#")
        dest = os.path.normpath(os.path.join(here, path)) if path else md
        if not os.path.exists(dest):
            problems.append(f"{md}:{no}: {t}: no such file {os.path.relpath(dest, root)}")
            continue
        if frag:
            if os.path.isdir(dest) or not dest.endswith(".md"):
                problems.append(f"{md}:{no}: {t}: anchor into a non-Markdown target")
            elif frag not in anchors(dest):
                problems.append(f"{md}:{no}: {t}: no heading #{frag} in {os.path.relpath(dest, root)}")
    return count, problems, external


def main(argv):
    root = argv[1]
    total, bad, ext = 0, [], []
    for md in argv[2:]:
        n, p, e = check(root, os.path.join(root, md))
        total += n
        bad += p
        ext += e
        print(f"{md}: {n} links, {len(p)} problems")
    for p in bad:
        print("  " + os.path.relpath(p, root) if p.startswith(root) else "  " + p)
    print(f"total {total} links checked, {len(bad)} problems; {len(set(ext))} external "
          f"links not fetched: {sorted(set(ext))}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
