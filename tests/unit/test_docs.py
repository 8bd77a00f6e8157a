"""The docs: generated parts match their sources, numbers are copied, links and names resolve."""

from __future__ import annotations

import glob
import importlib
import importlib.util
import re
import shutil
from pathlib import Path

import pytest

from serve_app.config import FederationConfig, PrefixAffinityConfig

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
TOP_FOLDERS = ("serve_app", "deployments", "autoscaling", "monitoring", "cluster_configs")
TOP_FOLDERS += ("scripts", "tests", "bench", "docs")
# Dotted names in the docs that start like a config path but are not one.
NOT_CONFIG_PATHS = {"ray.serve.llm"}
FILE_SUFFIXES = {"py", "yaml", "yml", "json", "md", "sh", "j2"}


def _load_generator():
    """docs/generate.py as a module, without running its main."""
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generator()


def _prose(path: Path) -> str:
    """A doc's text without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)


def _outside_bench_region(text: str) -> str:
    start, end = text.find(generate.BENCH_START), text.find(generate.BENCH_END)
    return text if start < 0 else text[:start] + text[end:]


def _slugs(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file (a repeated one gets -1, -2...)."""
    slugs: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose(path).splitlines():
        if not re.match(r"#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


def test_committed_generated_docs_are_what_make_docs_writes():
    stale = generate.stale(ROOT, generate.outputs(ROOT))
    assert not stale, f"run `make docs`: {', '.join(map(str, stale))} differ from their sources"
    assert generate.main(["--check"]) == 0


def _fresh_copy(root: Path) -> None:
    """A tree holding the generated files as `make docs` would write them now."""
    (root / "docs").mkdir()
    (root / "bench").mkdir()
    shutil.copy(ROOT / generate.BENCH_README, root / generate.BENCH_README)
    for target in generate.BENCH_TARGETS:
        shutil.copy(ROOT / target, root / target)
    for path, text in generate.outputs(root).items():
        (root / path).write_text(text)


def test_a_changed_field_description_makes_the_reference_stale(monkeypatch, tmp_path, capsys):
    _fresh_copy(tmp_path)
    assert generate.main(["--check"], root=tmp_path) == 0
    before = generate.render_reference()
    field = PrefixAffinityConfig.model_fields["block_chars"]
    monkeypatch.setattr(field, "description", "Characters per block, described anew.")

    after = generate.render_reference()

    assert after != before and "described anew" in after and "described anew" not in before
    assert generate.stale(tmp_path, generate.outputs(tmp_path)) == [generate.REFERENCE]
    capsys.readouterr()
    assert generate.main(["--check"], root=tmp_path) == 1
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and str(generate.REFERENCE) in message
    assert "make docs" in message


def test_a_changed_summary_table_makes_the_bench_regions_stale(tmp_path):
    _fresh_copy(tmp_path)
    bench = tmp_path / generate.BENCH_README
    measured = generate.summary_rows(bench.read_text())[1][2]
    bench.write_text(bench.read_text().replace(measured, f"{measured}, measured again", 1))
    stale = generate.stale(tmp_path, generate.outputs(tmp_path))
    assert sorted(stale) == sorted(generate.BENCH_TARGETS)


def test_check_names_a_missing_bench_region(tmp_path, capsys):
    _fresh_copy(tmp_path)
    (tmp_path / "README.md").write_text("# FIRST\n")
    assert generate.main(["--check"], root=tmp_path) == 1
    assert "README.md" in capsys.readouterr().err


def _summary_body() -> list[list[str]]:
    return generate.summary_rows((ROOT / generate.BENCH_README).read_text())[1:]


@pytest.mark.parametrize("target", sorted(generate.BENCH_TARGETS), ids=str)
def test_bench_regions_copy_every_row_of_bench_readmes_summary_table(target: Path):
    text = (ROOT / target).read_text()
    start, end = text.index(generate.BENCH_START), text.index(generate.BENCH_END)
    region = text[start:end]
    rows = [line for line in region.splitlines() if line.startswith("| ") and "| ---" not in line]
    body = _summary_body()
    assert body and len(rows) == len(body) + 1  # the header and one line per benchmark
    for cells, line in zip(body, rows[1:], strict=True):
        measured, met = cells[2], cells[3]
        assert f"| {measured} | {met} |" in line


def _table_numbers() -> set[str]:
    """Numbers of the measured column that carry a decimal point or a unit."""
    numbers = set()
    for cells in _summary_body():
        numbers |= set(re.findall(r"\d+\.\d+(?:x| ms| s)?|\d+(?:x|%| ms| s)\b", cells[2]))
    return numbers


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_benchmark_number_is_typed_by_hand(path: Path):
    if path.relative_to(ROOT) == generate.REFERENCE:
        return  # generated from the config models as a whole
    text = _outside_bench_region(path.read_text())
    typed = [n for n in _table_numbers() if re.search(rf"(?<![\w.]){re.escape(n)}(?![\w.])", text)]
    assert not typed, f"{path.name}: cite the generated table instead of {typed}"
    ratios = re.findall(r"(?<![\w.])\d+(?:\.\d+)?x\b", text)
    assert not ratios, f"{path.name}: measured ratios belong in the generated table: {ratios}"


def _links(path: Path) -> list[str]:
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", _prose(path))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file_and_heading_that_exist(path: Path):
    broken = []
    for link in _links(path):
        if re.match(r"^[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        heading_missing = anchor and resolved.suffix == ".md" and anchor not in _slugs(resolved)
        if not resolved.exists() or heading_missing:
            broken.append(link)
    assert not broken, f"{path.name}: broken links {broken}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_repository_path_named_exists(path: Path):
    pattern = rf"(?<![\w./-])((?:{'|'.join(TOP_FOLDERS)})/[\w./*-]*)"
    named = {match.rstrip(".,;:") for match in re.findall(pattern, path.read_text())}
    missing = [p for p in sorted(named) if not glob.glob(str(ROOT / p))]
    assert not missing, f"{path.name}: no such files {missing}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_python_name_named_imports(path: Path):
    pattern = rf"`(?:python -m )?((?:{'|'.join(TOP_FOLDERS[:4])})(?:\.\w+)+)`"
    missing = []
    for name in sorted(set(re.findall(pattern, path.read_text()))):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                found = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attribute in parts[cut:]:
                found = getattr(found, attribute, None)
            if found is None:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert not missing, f"{path.name}: cannot import {missing}"


def _reference_paths() -> set[str]:
    text = (ROOT / generate.REFERENCE).read_text()
    return {re.sub(r"<[^>]*>", "<>", p) for p in re.findall(r"^\| `([^`]+)` \|", text, re.M)}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_config_field_named_is_in_the_reference(path: Path):
    """A renamed field fails here until the prose that names it is updated too."""
    known = _reference_paths()
    sections = {p.split(".")[0].removesuffix("[]") for p in known}
    unknown = []
    for name in set(
        re.findall(r"`([a-z_]+(?:\[\])?(?:\.(?:[a-z_]+|<[^>`]+>)(?:\[\])?)+)`", _prose(path))
    ):
        if name in NOT_CONFIG_PATHS or name.split(".")[0].removesuffix("[]") not in sections:
            continue
        if name.rsplit(".", 1)[1] in FILE_SUFFIXES:
            continue  # a file name, such as keeper.py
        normalised = re.sub(r"(\.<[^>]*>)+$", "", re.sub(r"<[^>]*>", "<>", name))
        if normalised not in known:
            unknown.append(name)
    assert not unknown, f"{path.name}: not in the configuration reference: {sorted(unknown)}"


def test_the_reference_documents_every_federation_section():
    text = (ROOT / generate.REFERENCE).read_text()
    for name in FederationConfig.model_fields:
        assert f"`{name}" in text
