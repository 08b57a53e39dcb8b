"""Real English text from what is installed, offline and deterministic: sentence sets of
different kinds for calibrating and evaluating text models (tools/bench_calib_heldout.py).

Kinds (each a different register, from a different place on disk):

- "docstrings": the prose of the docstrings in numpy's, scipy's and torch's sources (read
  with `ast`, nothing imported): API documentation ("Return the indices of ...").
- "licenses": Python's own LICENSE.txt and the licence files of a fixed list of
  distributions from graphprune's dependency tree (`LICENSE_DISTRIBUTIONS`, those
  installed), each distinct sentence once: legal prose ("THE SOFTWARE IS PROVIDED AS IS
  ..."). A fixed list, so that installing an unrelated package changes nothing.
- "reference": the Python language reference and library topics that `pydoc` ships
  (`pydoc_data.topics`): technical narrative about a language.

`sentences(kind)` lists every usable sentence in a fixed order (files sorted, duplicates
dropped); `split(kind, sizes, seed)` draws disjoint sets from it; `paragraphs` joins
consecutive sentences into longer passages (another sequence length). The sets depend on
the installed versions only; `fingerprint` names them in a benchmark's output.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
import sysconfig
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import numpy as np

KINDS = ("docstrings", "licenses", "reference")
DOCSTRING_PACKAGES = ("numpy", "scipy", "torch")
LICENSE_DISTRIBUTIONS = (
    "attrs", "certifi", "charset_normalizer", "click", "filelock", "fsspec",
    "huggingface_hub", "idna", "iniconfig", "jinja2", "jsonschema", "markupsafe", "ml_dtypes",
    "mpmath", "msgpack", "networkx", "numpy", "onnx", "onnx_graphsurgeon", "onnx_ir",
    "onnxscript", "packaging", "pillow", "pluggy", "protobuf", "pytest", "pyyaml", "ray",
    "regex", "requests", "ruff", "safetensors", "scipy", "sympy", "timm", "torch",
    "torchvision", "tqdm", "transformers", "typing_extensions", "urllib3",
)  # fmt: skip
MIN_WORDS, MAX_WORDS = 6, 48

# A sentence ends at . ! or ? followed by space and a capital, not after "e.g." or "i.e.".
_SENTENCE_END = re.compile(r"(?<![.][a-z][.])(?<=[.!?])\s+(?=[A-Z\"'(])")
_SECTION = re.compile(r"^\s*(-{3,}|={3,}|\*{3,}|\.\. |>>>|\.\.\.)")
_CODE = re.compile(r"[{}\[\]<>=_\\|`$#@~^]|::|\(\)")


def sentences(kind: str) -> list[str]:
    """Every usable sentence of `kind`, deduplicated, in a fixed order."""
    if kind not in KINDS:
        raise ValueError(f"unknown text kind {kind!r} (choose from {KINDS})")
    return list(_sentences(kind))


@cache
def _sentences(kind: str) -> tuple[str, ...]:
    texts = {"docstrings": _docstrings, "licenses": _licenses, "reference": _reference}[kind]()
    seen: set[str] = set()
    found = []
    for text in texts:
        for sentence in _split_sentences(text):
            key = sentence.lower()
            if key not in seen:
                seen.add(key)
                found.append(sentence)
    return tuple(found)


def split(kind: str, sizes: Iterable[int], seed: int = 0) -> list[list[str]]:
    """Disjoint random sets of the given sizes (one seeded permutation of `sentences`)."""
    pool = sentences(kind)
    sizes = list(sizes)
    if sum(sizes) > len(pool):
        raise ValueError(f"{kind}: {sum(sizes)} sentences asked, {len(pool)} available")
    order = np.random.default_rng(seed).permutation(len(pool))
    sets, start = [], 0
    for size in sizes:
        sets.append([pool[i] for i in order[start : start + size]])
        start += size
    return sets


def paragraphs(kind: str, count: int, *, words: int = 120, seed: int = 0) -> list[str]:
    """`count` passages of consecutive sentences of `kind` with at least `words` words,
    starting at seeded positions (longer sequences than single sentences)."""
    pool = sentences(kind)
    starts = np.random.default_rng([seed, 1]).permutation(len(pool))
    found = []
    for start in starts:
        passage, total = [], 0
        for sentence in pool[start:]:
            passage.append(sentence)
            total += len(sentence.split())
            if total >= words:
                found.append(" ".join(passage))
                break
        if len(found) == count:
            return found
    raise ValueError(f"{kind}: only {len(found)} passages of {words} words")


def fingerprint(texts: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:10]


def _split_sentences(text: str) -> Iterator[str]:
    """Prose sentences of a text: paragraphs without markup, split at sentence ends."""
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().splitlines()
        if not lines or any(_SECTION.match(line) for line in lines):
            continue  # headings, directives, doctests, tables
        if any(line.startswith(("    ", "\t")) for line in lines[1:]) and ":" in lines[0]:
            continue  # a "name : type" parameter entry and its description
        flat = " ".join(line.strip() for line in lines)
        for sentence in _SENTENCE_END.split(flat):
            if _usable(sentence):
                yield sentence


def _usable(sentence: str) -> bool:
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or not sentence[0].isupper():
        return False
    if sentence[-1] not in ".!?" or _CODE.search(sentence) or "http" in sentence:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in sentence)
    return letters >= 0.9 * len(sentence)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def docstrings_under(root: Path, skip: tuple[str, ...], nodes: tuple[type, ...]) -> Iterator[str]:
    """The docstrings of the `nodes` (modules, classes, functions) of every .py file under
    `root`, in path order, files under a folder named in `skip` left out."""
    for path in sorted(root.rglob("*.py")):
        if any(part in skip for part in path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, nodes):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


def _docstrings() -> Iterator[str]:
    for package in DOCSTRING_PACKAGES:
        root = _package_dir(package)
        if root is not None:
            nodes = (ast.Module, ast.ClassDef, ast.FunctionDef)
            yield from docstrings_under(root, ("tests",), nodes)


def _licenses() -> Iterator[str]:
    python = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    paths = [python] if python.is_file() else []
    site = Path(sysconfig.get_paths()["purelib"])
    infos = {_distribution(p.name): p for p in site.glob("*.dist-info")}
    patterns = ("LICENSE*", "LICENCE*", "COPYING*", "licenses/*")
    for name in LICENSE_DISTRIBUTIONS:
        info = infos.get(name)
        if info is not None:
            paths += sorted({p for pattern in patterns for p in info.glob(pattern) if p.is_file()})
    for path in paths:
        try:
            yield path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def _distribution(folder: str) -> str:
    """numpy-2.4.6.dist-info -> numpy (names normalised as in wheel folder names)."""
    return re.sub(r"-[^-]*\.dist-info$", "", folder).lower().replace("-", "_").replace(".", "_")


def _reference() -> Iterator[str]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name]
