"""Tokenizer directories: what ``Tokenizer.load`` accepts and ``Tokenizer.save`` writes.

Loading looks, in order, for
1. ``tokenizer_meta.json`` (written by ``save``): names the engine file and the specials;
2. ``spm.model`` / ``spiece.model``: a sentencepiece model (DeBERTa-v3, ALBERT, ...);
3. ``tokenizer.json``: any HF ``tokenizers`` tokenizer;
4. ``vocab.json`` + ``merges.txt``: GPT-2/RoBERTa byte-level BPE;
5. ``vocab.txt``: a BERT WordPiece vocabulary (lowercased unless ``tokenizer_config.json``
   says ``"do_lower_case": false``), built as transformers' ``BertTokenizer`` builds it.
Without our metadata the special tokens come from ``tokenizer_config.json`` /
``special_tokens_map.json`` when present, else from the vocabulary (``<s>``/``<mask>``:
RoBERTa's five, ``[CLS]``/``[MASK]``: BERT's). Specials missing from the vocabulary are
appended after it (DeBERTa-v3's ``[MASK]`` = 128000; GPT-2 files get RoBERTa's five at
50257.. in transformers' order ``<s> </s> <unk> <pad> <mask>``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from data_pipeline.tokenizer.backends import HFBackend, SpmBackend
from data_pipeline.tokenizer.hf_files import (
    bytelevel_plain,
    full_hf_json,
    read_hf_specials,
    split_full_json,
    wordpiece_plain,
    write_hf_configs,
)
from data_pipeline.tokenizer.specials import (
    FAMILIES,
    FIELDS,
    KINDS,
    MODEL_FAMILIES,
    TRAIN_ORDER,
    SpecialTokens,
    TokenizerError,
)
from data_pipeline.tokenizer.training import (
    MIN_VOCAB,
    MIN_VOCAB_REASON,
    Budget,
    TrainingError,
    train_bytelevel,
    train_spm_bpe,
    train_wordpiece,
)

META_NAME = "tokenizer_meta.json"
META_FORMAT = "encoder-pretraining-tokenizer"
META_VERSION = 1
SPM_NAMES = ("spm.model", "spiece.model")
HF_CONFIG_NAMES = ("tokenizer_config.json", "special_tokens_map.json")  # write_hf_configs
# the model files HF tokenizers writes for a kind, saved next to tokenizer.json
MODEL_FILES = {"bytelevel": ("vocab.json", "merges.txt"), "wordpiece": ("vocab.txt",)}
TRAINERS = {"spm-bpe": train_spm_bpe, "bytelevel": train_bytelevel, "wordpiece": train_wordpiece}


def _error(msg: str) -> TokenizerError:
    return TokenizerError(msg)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


def _choices(names) -> str:
    """``a, b or c``."""
    names = list(names)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _error(f"{path}: not valid JSON ({_one_line(e)})") from e


def _engine(d: Path, name: str):
    """(backend, special added tokens of a tokenizer.json) for engine file ``name``."""
    path = d / name
    try:
        if name in SPM_NAMES:
            return SpmBackend(path.read_bytes()), []
        if name == "tokenizer.json":
            full = _read_json(path)
            if not isinstance(full, dict) or "model" not in full:
                raise _error(f"{path}: not an HF tokenizers file (no 'model')")
            plain, specials = split_full_json(full)
            return HFBackend(plain), specials
        if name == "vocab.json":
            return HFBackend(bytelevel_plain(d / "vocab.json", d / "merges.txt")), []
        if name == "vocab.txt":
            cfg = d / "tokenizer_config.json"
            config = _read_json(cfg) if cfg.is_file() else {}
            return HFBackend(wordpiece_plain(path, config if isinstance(config, dict) else {})), []
    except TokenizerError:
        raise
    except Exception as e:  # noqa: BLE001 - any library failure on a bad file is "cannot load"
        raise _error(f"{path}: cannot load ({_one_line(e)})") from e
    raise _error(f"{path}: unknown tokenizer engine file")


def load_dir(cls, path):
    d = Path(path)
    if not d.is_dir():
        raise _error(f"{d}: {'not a directory' if d.exists() else 'no such directory'}")
    meta = _read_json(d / META_NAME) if (d / META_NAME).is_file() else None
    if meta is not None:
        try:
            if meta.get("format") != META_FORMAT:
                raise KeyError("format")
            backend, specials_json = _engine(d, meta["engine"])
            tokens = SpecialTokens(**meta["special_tokens"])
            flags = {k: (bool(v[0]), bool(v[1])) for k, v in meta.get("flags", {}).items()}
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            raise _error(f"{d / META_NAME}: not a valid tokenizer metadata file ({e})") from e
        tok = cls(backend, tokens, {a["content"]: a["id"] for a in specials_json}, flags)
        tok.model_family = meta.get("model_family")  # the --family it was trained for
        return tok
    name = next((n for n in SPM_NAMES if (d / n).is_file()), None)
    if name is None and (d / "tokenizer.json").is_file():
        name = "tokenizer.json"
    if name is None and (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        name = "vocab.json"
    if name is None and (d / "vocab.txt").is_file():
        name = "vocab.txt"
    if name is None:
        raise _error(
            f"{d}: not a tokenizer directory "
            "(expected tokenizer.json, vocab.json+merges.txt or spm.model)"
        )
    backend, specials_json = _engine(d, name)
    added = {a["content"]: a["id"] for a in specials_json}
    try:
        config = read_hf_specials(d)
    except ValueError as e:
        raise _error(str(e)) from e

    def known(tok: str) -> bool:
        return tok in added or backend.token_to_id(tok) is not None

    if known("<s>") or known("<mask>"):
        default = FAMILIES["roberta"]
    elif known("[CLS]") or known("[MASK]"):
        default = FAMILIES["bert"]
    else:
        default = FAMILIES["roberta" if backend.kind == "bytelevel" else "bert"]
    tokens = SpecialTokens(
        **{f: config[f]["content"] if f in config else getattr(default, f) for f in FIELDS}
    )
    flags = {
        v["content"]: (bool(v.get("lstrip", False)), bool(v.get("rstrip", False)))
        for v in config.values()
        if "lstrip" in v or "rstrip" in v
    }
    flags.update(
        {a["content"]: (bool(a.get("lstrip")), bool(a.get("rstrip"))) for a in specials_json}
    )
    return cls(backend, tokens, added, flags)


def _saved_copy(tok, src: Path, names: set[str]) -> dict[str, bytes] | None:
    """The files of ``src`` if it is a directory ``save`` wrote for this very tokenizer
    (our metadata, the same fingerprint, every file there), else None."""
    try:
        meta = json.loads((src / META_NAME).read_text(encoding="utf-8"))
        if not (
            isinstance(meta, dict)
            and meta.get("format") == META_FORMAT
            and meta.get("version") == META_VERSION
            and meta.get("fingerprint") == tok.fingerprint
        ):
            return None
        return {name: (src / name).read_bytes() for name in sorted(names)}
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def save_dir(tok, out_dir, copy_from=None) -> None:
    d = Path(out_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _error(f"{d}: cannot create directory ({e.strerror or e})") from e
    backend = tok._backend
    engine = "spm.model" if isinstance(backend, SpmBackend) else "tokenizer.json"
    writes = {engine, "tokenizer.json", *MODEL_FILES.get(tok.kind, ())}
    copied = None
    if copy_from is not None:
        if Path(copy_from).resolve() == d.resolve():
            return
        # rebuilding tokenizer.json from the engine costs ~0.1 s, copying it ~1 ms
        copied = _saved_copy(tok, Path(copy_from), writes | set(HF_CONFIG_NAMES) | {META_NAME})
    if (d / META_NAME).is_file():
        # replacing an earlier tokenizer: until the new metadata exists the directory must
        # not pass for the old one, and none of the old engine files may linger
        (d / META_NAME).unlink()
        for name in {*SPM_NAMES, *(n for names in MODEL_FILES.values() for n in names)} - writes:
            (d / name).unlink(missing_ok=True)
    if copied is not None:
        for name, data in sorted(copied.items(), key=lambda kv: kv[0] == META_NAME):
            _write_bytes(d / name, data)  # the metadata last, as below
        return
    if engine == "spm.model":
        _write_bytes(d / engine, backend.proto_bytes)
    elif tok.kind in MODEL_FILES:  # RoBERTa's vocab.json + merges.txt, BERT's vocab.txt
        backend.tok.model.save(str(d))
    specials = [(i, t, *tok._flags.get(t, (False, False))) for t, i in tok._special.items()]
    try:
        full = full_hf_json(
            backend.hf_plain(), specials, tok.specials.cls, tok.specials.sep, tok.family
        )
    except ValueError as e:
        raise _error(f"{d}: cannot write tokenizer.json ({_one_line(e)})") from e
    _write_bytes(d / "tokenizer.json", full.encode("utf-8"))
    write_hf_configs(d, asdict(tok.specials), bert_wordpiece=tok.kind == "wordpiece")
    meta = {
        "format": META_FORMAT,
        "version": META_VERSION,
        "kind": tok.kind,
        "family": tok.family,
        **({"model_family": mf} if (mf := getattr(tok, "model_family", None)) else {}),
        "engine": engine,
        "vocab_size": tok.vocab_size,
        "fingerprint": tok.fingerprint,
        "special_tokens": asdict(tok.specials),
        "appended": tok.appended,
        "flags": {t: list(v) for t, v in sorted(tok._flags.items())},
    }
    # written last: a directory is only "ours" once everything else is in place
    _write_bytes(d / META_NAME, (json.dumps(meta, ensure_ascii=False, indent=2) + "\n").encode())


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as e:
        raise _error(f"{path}: cannot write ({e.strerror or e})") from e


def train_and_save(cls, texts, out_dir, vocab_size, kind, family, max_train_bytes):
    """Train, save to ``out_dir`` and load back. ``family``: a model family of
    ``MODEL_FAMILIES`` (its special tokens; and its usual kind when ``kind`` is None)."""
    if family not in MODEL_FAMILIES:
        raise _error(f"unknown family {family!r} (choose {_choices(MODEL_FAMILIES)})")
    specials_family, usual_kind = MODEL_FAMILIES[family]
    kind = usual_kind if kind is None else kind
    if kind not in KINDS:
        raise _error(f"unknown tokenizer kind {kind!r} (choose {_choices(KINDS)})")
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB[kind]:
        raise _error(
            f"vocab_size must be an integer >= {MIN_VOCAB[kind]} for {kind} "
            f"({MIN_VOCAB_REASON[kind]}), got {vocab_size!r}"
        )
    if max_train_bytes is not None and max_train_bytes <= 0:
        raise _error(f"max_train_bytes must be positive, got {max_train_bytes}")
    tokens = FAMILIES[specials_family]
    order = [(f, getattr(tokens, f)) for f in TRAIN_ORDER[specials_family]]
    budget = Budget(max_train_bytes)
    try:
        trained = TRAINERS[kind](texts, vocab_size, order, budget)
    except TrainingError as e:
        raise _error(str(e)) from e
    if kind == "spm-bpe":
        backend, added = SpmBackend(trained), {}
    else:
        plain, specials_json = split_full_json(trained)
        backend = HFBackend(plain)
        added = {a["content"]: a["id"] for a in specials_json}
    tok = cls(backend, tokens, added)
    tok.model_family = family
    tok.save(out_dir)
    tok = cls.load(out_dir)
    tok.train_stats = {"texts": budget.texts, "bytes": budget.bytes, "truncated": budget.truncated}
    return tok
