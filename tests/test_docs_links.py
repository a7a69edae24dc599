"""Every internal link and anchor of the README and docs resolves (GitHub's heading
slugs), so moving or renaming a section cannot silently break the README's pointers."""
import glob
import os

import md_links

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files():
    names = ["README.md", "CHANGELOG.md", os.path.join("tests", "fixtures", "README.md")]
    names += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return names


def test_readme_and_docs_links_resolve():
    total, problems = 0, []
    for name in _files():
        n, bad, _ = md_links.check(ROOT, os.path.join(ROOT, name))
        total += n
        problems += bad
    assert total > 100        # (the README alone links to its sections and docs/)
    assert problems == []


def test_checker_finds_a_missing_file_a_missing_anchor_and_an_undefined_reference(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## A section\n")
    md = tmp_path / "doc.md"
    md.write_text("# Doc\n\n## Two words\n\n[ok](#two-words) [ok](other.md#a-section)\n"
                  "[bad](#no-such) [bad](missing.md) [bad](other.md#title-x) [x][undefined]\n"
                  "`[not a link](#inside-code)`\n\n```\n[in a block](#nowhere)\n```\n")
    n, bad, _ = md_links.check(str(tmp_path), str(md))
    assert n == 5
    assert len(bad) == 4
    assert any("#no-such" in p for p in bad) and any("missing.md" in p for p in bad)
    assert any("title-x" in p for p in bad) and any("undefined" in p for p in bad)
