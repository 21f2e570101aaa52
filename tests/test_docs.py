"""The README is a front page (under 250 lines) over the manual in docs/, and every relative link in them lands.

A link is relative when it names no scheme (`docs/train.md#models`, `../bench/RESULTS.md`, `#serve`);
it must point at an existing file, and its anchor, if any, at a heading of that Markdown file, using
GitHub's anchors (lowercase, punctuation dropped, spaces to hyphens, `-1`, `-2` for repeats).
Links inside code blocks and code spans are text, not links.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+).+?\1")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        marker = re.match(r"^\s*(```+|~~~+)", line)
        if marker:
            if fence is None:
                fence = marker.group(1)[0] * 3
            elif line.strip().startswith(fence):
                fence = None
            continue
        if fence is None:
            lines.append((number, line))
    return lines


def links(line: str) -> list[str]:
    """The link targets of a line of prose (a code span's brackets are text)."""
    return LINK.findall(CODE_SPAN.sub("", line))


def slug(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Every relative link of a Markdown file that points at no file or no heading, as `file:line: target`."""
    problems = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for target in links(line):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}:{number}: {target}"
            if not resolved.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where} (no heading with the anchor #{anchor} in {resolved.name})")
    return problems


def manual() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_in_the_readme_and_docs_lands():
    problems = [problem for path in manual() for problem in broken_links(path)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_readme_is_a_front_page_that_lists_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < README_MAX_LINES, "move detail into a docs/ page"
    linked = {target.partition("#")[0] for _, line in prose_lines(readme) for target in links(line)}
    missing = [page.name for page in sorted((ROOT / "docs").glob("*.md")) if f"docs/{page.name}" not in linked]
    assert not missing, f"docs pages the README's table of contents does not list: {missing}"


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Serve: an API (`v1`)\n\n## Serve: an API (`v1`)\n")
    (tmp_path / "README.md").write_text(
        "# Front\n\n[ok](docs/page.md#serve-an-api-v1) [repeat](docs/page.md#serve-an-api-v1-1) "
        "[web](https://example.com/x) [self](#front)\n"
        "[gone](docs/missing.md) [bad anchor](docs/page.md#serve)\n"
        "```\n[in code](docs/nowhere.md)\n```\n`[span](docs/nowhere.md)`\n")
    assert broken_links(tmp_path / "README.md", tmp_path) == [
        "README.md:4: docs/missing.md (no such file)",
        "README.md:4: docs/page.md#serve (no heading with the anchor #serve in page.md)",
    ]
