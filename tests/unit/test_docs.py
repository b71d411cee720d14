"""The documentation stays true to the repository: every relative link resolves, docs/configuration.md
lists every key the code reads with the code's default, every default another page states agrees,
and docs/metrics.md names every series the frontends export."""
import functools
import re
from pathlib import Path

import msgspec
import msgspec.inspect as inspect
import pytest
import yaml
from markdown_it import MarkdownIt

from common.config import ROOT, InferenceConfig, ServerConfig

PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "bench").glob("*.md")])
MARKDOWN = MarkdownIt("commonmark").enable("table")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


@functools.cache
def tokens(page: Path) -> list:
    return MARKDOWN.parse(page.read_text())


def plain_text(inline) -> str:
    return "".join(child.content for child in inline.children if child.type in ("text", "code_inline"))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


@functools.cache
def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    stream = tokens(page)
    for opening, inline in zip(stream, stream[1:]):
        if opening.type == "heading_open":
            base = slug(plain_text(inline))
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


def links(page: Path) -> list[str]:
    targets = []
    for token in tokens(page):
        for child in token.children or ():
            if child.type == "link_open":
                targets.append(child.attrs["href"])
            elif child.type == "image":
                targets.append(child.attrs["src"])
    return targets


def relative_links() -> list[tuple[Path, str]]:
    return [(page, target) for page in PAGES for target in links(page) if not SCHEME.match(target)]


@pytest.mark.parametrize("page, target", relative_links(),
                         ids=lambda value: str(value.relative_to(ROOT)) if isinstance(value, Path) else value)
def test_every_relative_link_resolves(page: Path, target: str):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.exists(), f"{page.relative_to(ROOT)} links to {target}: no such file"
    if anchor and file.suffix == ".md":
        assert anchor in anchors(file), f"{page.relative_to(ROOT)} links to {target}: no such heading"


def tables(page: Path) -> list[tuple[str, list[list[str]]]]:
    """Every table of a page, as (the `##` section it is in, its rows of raw cells, header first)."""
    found, section, row, rows = [], "", [], None
    stream = tokens(page)
    for index, token in enumerate(stream):
        if token.type == "heading_open" and token.tag == "h2":
            section = plain_text(stream[index + 1])
        elif token.type == "table_open":
            rows = []
        elif token.type == "tr_open":
            row = []
        elif token.type in ("th_open", "td_open"):
            row.append(stream[index + 1].content)
        elif token.type == "tr_close":
            rows.append(row)
        elif token.type == "table_close":
            found.append((section, rows))
    return found


def code_defaults(struct: type, prefix: str = "") -> dict[str, object]:
    """Every key a config Struct reads, dotted (`router.policy`; `engines[].request_address` for a
    list of Structs), with its default; a key with none is "required"."""
    keys = {}
    for field in inspect.type_info(struct).fields:
        name = prefix + field.name
        kind = field.type.item_type if isinstance(field.type, inspect.ListType) else field.type
        if isinstance(field.type, inspect.StructType):
            keys.update(code_defaults(kind.cls, name + "."))
            continue
        keys[name] = ("required" if field.required else
                      field.default if field.default is not msgspec.NODEFAULT else field.default_factory())
        if isinstance(kind, inspect.StructType):
            keys.update(code_defaults(kind.cls, name + "[]."))
    return keys


def inference_keys() -> dict[str, object]:
    """inference.yml's keys; an entry of `models` takes the top level's (docs/pools.md), listed once."""
    return {key: default for key, default in code_defaults(InferenceConfig).items() if not key.startswith("models[].")}


CODE_KEYS = {"conf/server.yml": code_defaults(ServerConfig), "conf/inference.yml": inference_keys()}


def test_a_models_entry_takes_the_top_level_keys_with_their_defaults():
    keys = code_defaults(InferenceConfig)
    entry = {key.removeprefix("models[]."): default for key, default in keys.items() if key.startswith("models[].")}
    assert entry == {key: default for key, default in inference_keys().items() if key != "models"}


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def stated_default(cell: str):
    """A default cell as the code would hold it: `600` is 600, `""` is "", `["*"]` a list."""
    values = backticked(cell)
    return yaml.safe_load(values[0]) if values else cell.strip()


def same(stated, code) -> bool:
    if isinstance(stated, bool) or isinstance(code, bool):
        return type(stated) is type(code) and stated == code
    return stated == msgspec.to_builtins(code)  # a default list of records is stated as YAML mappings


def key_tables(page: Path):
    """(section, key cell, default cell) of each row of the tables headed `key | default | ...`."""
    for section, rows in tables(page):
        header = [cell.lower() for cell in rows[0]]
        if len(header) > 1 and header[0].startswith("key") and header[1] == "default":
            yield from ((section, row[0], row[1]) for row in rows[1:])


def configuration_page() -> dict[str, dict[str, str]]:
    page: dict[str, dict[str, str]] = {file: {} for file in CODE_KEYS}
    for section, key_cell, default_cell in key_tables(ROOT / "docs" / "configuration.md"):
        assert section in page, f"docs/configuration.md: a key table under '{section}', not under a file"
        for key in backticked(key_cell):
            page[section][key] = default_cell
    return page


@pytest.mark.parametrize("file", CODE_KEYS)
def test_configuration_page_lists_every_key_with_the_code_default(file: str):
    listed = configuration_page()[file]
    missing = sorted(set(CODE_KEYS[file]) - set(listed))
    assert not missing, f"docs/configuration.md lacks these keys of {file}: {missing}"
    unknown = sorted(set(listed) - set(CODE_KEYS[file]))
    assert not unknown, f"docs/configuration.md lists keys {file} does not have: {unknown}"
    wrong = {key: (listed[key], default) for key, default in CODE_KEYS[file].items()
             if not same(stated_default(listed[key]), default)}
    assert not wrong, f"docs/configuration.md states other defaults than the code (page, code): {wrong}"


def test_every_default_another_page_states_is_the_code_default():
    """Topic pages repeat some keys in their own tables: their defaults must not drift either."""
    code = {**CODE_KEYS["conf/server.yml"], **CODE_KEYS["conf/inference.yml"]}
    wrong = {}
    for page in PAGES:
        for _, key_cell, default_cell in key_tables(page):
            for key in (key for key in backticked(key_cell) if key in code):
                if not same(stated_default(default_cell), code[key]):
                    wrong[f"{page.relative_to(ROOT)}: {key}"] = (default_cell, code[key])
    assert not wrong, f"defaults stated other than the code's (page, code): {wrong}"


def test_metrics_page_names_every_series_the_frontends_export():
    """Each `llm_*` name frontend/metrics.py defines is on the page (a counter as `<name>_total`)."""
    names = set(re.findall(r'"(llm_\w+)"', (ROOT / "frontend" / "metrics.py").read_text()))
    page = (ROOT / "docs" / "metrics.md").read_text()
    missing = sorted(name for name in names if f"`{name}`" not in page and f"`{name}_total`" not in page)
    assert not missing, f"docs/metrics.md lacks {missing}"
