"""``python -m data_pipeline sample-corpus OUT_DIR``: the built-in English corpus (no download).

The text is the running Python's own documentation: every ``pydoc_data.topics`` entry (the
language reference topics behind ``help()``) and the docstrings of the standard library's
modules, classes, functions and methods. Modules are walked in sorted order and only modules
that are safe to import are imported (no GUI, no browser, no ``__main__`` scripts, no test
suites; import failures are skipped), so the output is the same bytes on every run of the
same Python, about 2 MB, written in a few seconds.

Writes ``OUT_DIR/train.jsonl`` and ``OUT_DIR/valid.jsonl`` (about 3 % of documents, chosen
by a stable hash of each document's source), one ``{"text": ..., "source": ...}`` per line,
``source`` being ``pydoc:<topic>`` or ``<module>.<qualname>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import io
import json
import os
import pkgutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from pydoc_data.topics import topics

from data_pipeline.common import CommandError

VALID_PER_MILLE = 30  # ~3 % of documents go to valid.jsonl
MIN_DOC_CHARS = 40  # shorter docstrings ("Return self==value.") are noise, not text
# Modules never imported: GUI / browser / sound, interactive or deprecated tooling, test
# suites, platform-specific ones, and modules that print or act on import.
DENY = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "pydoc_data",
    "lib2to3",
    "ensurepip",
    "venv",
    "test",
    "tests",
    "idle_test",
    "msilib",
    "winreg",
    "winsound",
    "nt",
    "msvcrt",
    "readline",
    "rlcompleter",
    "encodings",
    "distutils",
    "pip",
    "setuptools",
    "site",
    "sitecustomize",
    "usercustomize",
    "__main__",
}


def _is_valid(source: str) -> bool:
    h = int.from_bytes(hashlib.blake2b(source.encode(), digest_size=8).digest(), "big")
    return h % 1000 < VALID_PER_MILLE


def _safe_import(name: str):
    """Import ``name`` quietly; None if it fails or looks unsafe."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except (Exception, SystemExit):  # any failure (missing C extension, platform) skips it
            return None


def _modules() -> Iterator[str]:
    """Importable standard-library module names, depth first, sorted at every level."""

    def walk(name: str) -> Iterator[str]:
        mod = _safe_import(name)
        if mod is None:
            return
        yield name
        path = getattr(mod, "__path__", None)
        if path is None:
            return
        subs = sorted(m.name for m in pkgutil.iter_modules(path))
        for sub in subs:
            if sub.startswith("_") or sub in DENY:
                continue
            yield from walk(f"{name}.{sub}")

    for top in sorted(sys.stdlib_module_names):
        if not top.startswith("_") and top not in DENY:
            yield from walk(top)


def _members(mod) -> Iterator[tuple[str, object]]:
    """(qualname, object) of the module's own public classes, functions and methods."""
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_"):
            continue
        # Hooks that other code replaces at run time (pytest: sys.unraisablehook; torch
        # distributed: sys.excepthook): the module keeps the original as __name__, so the
        # corpus does not depend on what the process has imported or initialised.
        original = vars(mod).get(f"__{name}__")
        if original is not None and getattr(obj, "__module__", None) != mod.__name__:
            obj = original
        if getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isclass(obj):
            yield name, obj
            for attr, val in sorted(vars(obj).items()):
                if attr.startswith("_") and attr != "__init__":
                    continue
                if isinstance(val, (staticmethod, classmethod)):
                    val = val.__func__
                if (
                    inspect.isfunction(val)
                    or inspect.ismethoddescriptor(val)
                    or isinstance(val, property)
                ):
                    yield f"{name}.{attr}", val
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            yield name, obj


def documents() -> Iterator[tuple[str, str]]:
    """(source, text) of every document, in a fixed order, duplicates removed."""

    seen: set[str] = set()

    def fresh(text: str) -> bool:
        if len(text) < MIN_DOC_CHARS or text in seen:
            return False
        seen.add(text)
        return True

    for key in sorted(topics):
        text = topics[key].strip()
        if fresh(text):
            yield f"pydoc:{key}", text
    for modname in _modules():
        mod = sys.modules[modname]
        doc = mod.__doc__ if isinstance(mod.__doc__, str) else ""
        if fresh(inspect.cleandoc(doc)):
            yield modname, inspect.cleandoc(doc)
        for qualname, obj in _members(mod):
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and fresh(text := inspect.cleandoc(doc)):
                yield f"{modname}.{qualname}", text


def write_corpus(out_dir: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Write train.jsonl / valid.jsonl; returns {split: {"documents", "bytes"}}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = {"train": [], "valid": []}
    for source, text in documents():
        line = json.dumps({"text": text, "source": source}, ensure_ascii=False)
        buf["valid" if _is_valid(source) else "train"].append(line + "\n")
    stats = {}
    for split, lines in buf.items():
        data = "".join(lines).encode("utf-8")
        tmp = out / f".{split}.jsonl.tmp-{os.getpid()}"
        tmp.write_bytes(data)
        os.replace(tmp, out / f"{split}.jsonl")
        stats[split] = {"documents": len(lines), "bytes": len(data)}
    return stats


def add_arguments(parser) -> None:
    parser.add_argument(
        "out_dir", metavar="OUT_DIR", help="directory for train.jsonl and valid.jsonl"
    )


def main(args) -> int:
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise CommandError(f"{args.out_dir}: exists and is not a directory")
    try:
        stats = write_corpus(args.out_dir)
    except OSError as e:
        raise CommandError(f"{args.out_dir}: cannot write ({e.strerror or e})") from e
    for split, s in stats.items():
        path = Path(args.out_dir) / f"{split}.jsonl"
        print(f"{path}: {s['documents']} documents, {s['bytes'] / 1e6:.2f} MB")
    return 0
