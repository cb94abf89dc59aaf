"""The docs stay what a newcomer needs: a short README, no "the seed" for the tutorial, and no dead links.

Pure text checks over the repository's files; no network, no model.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200  # the README is read in two minutes; reference text goes under docs/
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "bench").rglob("*.md"))]
# where the original mnist_classifier.py must be called "the tutorial" (`--seed` is only the random seed)
NAMED_FILES = [*PAGES, ROOT / "pyproject.toml", ROOT / "mnist_classifier.py",
               *(p for p in sorted((ROOT / "src").rglob("*")) if p.suffix in (".py", ".c", ".js", ".html", ".css")),
               *sorted((ROOT / "bench").rglob("*.py"))]
THE_SEED = re.compile(r"\bthe seed\b|\bseed's\b", re.IGNORECASE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move reference text to docs/"


def test_the_tutorial_is_never_called_the_seed():
    hits = [f"{rel(p)}:{i}: {line.strip()}" for p in NAMED_FILES
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if THE_SEED.search(line)]
    assert not hits, "say 'the tutorial' (or 'the original mnist_classifier.py'):\n" + "\n".join(hits)


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, -1, -2 ... for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for text in HEADING.findall(FENCE.sub("", page.read_text())):
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def links(page: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text()))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # skip https:, mailto:


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_resolves(page):
    assert page.exists(), rel(page)
    broken = []
    for target in links(page):
        path, _, frag = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            broken.append(f"{target}: no heading #{frag} in {rel(dest)}")
    assert not broken, f"{rel(page)}:\n" + "\n".join(broken)


REPO_PATH = re.compile(r"`((?:src|tests|bench|docs)/[^`\s:]*)")  # `src/mnist_cnn/perf/fused.c`, `tests/x.py::test`
MODULE = re.compile(r"\bmnist_cnn(?:\.\w+)+")  # mnist_cnn.predict.preprocess, mnist_cnn.data.normalize


def module_exists(dotted: str) -> bool:
    """mnist_cnn.a.b is src/mnist_cnn/a/b.py or a package; mnist_cnn.a.name is a name defined in a.py."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT / "src" / Path(*parts[:cut])
        source = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        if source.exists():
            rest = parts[cut:]
            return not rest or (len(rest) == 1 and re.search(
                rf"^(?:def|class)\s+{rest[0]}\b|^{rest[0]}\s*[:=]|\bimport\b.*\b{rest[0]}\b",
                source.read_text(), re.MULTILINE) is not None)
    return False


def test_named_paths_and_modules_exist():
    missing = []
    for page in (p for p in PAGES if p.name != "CHANGELOG.md"):  # the changelog names old modules on purpose
        text = page.read_text()
        missing += [f"{rel(page)}: {p}" for p in REPO_PATH.findall(text)  # a pattern (x/*.json): its folder
                    if not (ROOT / p if "*" not in p else (ROOT / p).parent).exists()]
        missing += [f"{rel(page)}: {m}" for m in set(MODULE.findall(text)) if not module_exists(m)]
    assert not missing, "paths or modules the docs name that are not in the tree:\n" + "\n".join(sorted(missing))


def test_the_link_checker_sees_links_and_headings(tmp_path):
    # the checks above would pass vacuously if the patterns matched nothing
    page = tmp_path / "p.md"
    page.write_text("# Training for robustness: `--augment`\n## A, b\n## A, b\n[x](p.md#a-b-1) ![y](img.png)\n"
                    "`[not](a-link)`\n```\n[nor](this)\n```\n[web](https://example.org)\n")
    assert links(page) == ["p.md#a-b-1", "img.png"]
    assert anchors(page) == {"training-for-robustness---augment", "a-b", "a-b-1"}
    assert THE_SEED.search("The seed's Q&A") and not THE_SEED.search("--seed 0, seeds 1 and 2")
    assert REPO_PATH.findall("`tests/x.py::test_y` and `src/a/b.c`, not `app.py`") == ["tests/x.py", "src/a/b.c"]
    assert module_exists("mnist_cnn.predict.preprocess") and module_exists("mnist_cnn.data.normalize")
    assert not module_exists("mnist_cnn.web.load") and not module_exists("mnist_cnn.data.no_such_name")
