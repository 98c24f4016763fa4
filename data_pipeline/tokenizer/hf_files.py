"""HF ``tokenizers`` / ``transformers`` interop, without importing ``transformers``.

- ``spm_to_hf``: a sentencepiece model as an HF ``tokenizers`` JSON. BPE models become a
  ``BPE`` model with the merges recovered the way transformers' ``SentencePieceExtractor``
  does (every split of a piece into two vocabulary pieces, ranked by the merged piece's id,
  which is its score order); unigram models keep their scores. The normalizer reproduces
  the sentencepiece normalizer spec (precompiled charsmap, whitespace cleanup, dummy
  prefix, " " -> "▁"); user-defined symbols become non-special added tokens, control
  symbols special ones. For the lossless models this project trains, ids equal
  sentencepiece's on any text without U+2581 (checked in the tests).
- ``full_hf_json`` adds the special tokens and the ``[cls] $A [sep]`` post-processor to a
  plain (specials-free) tokenizer JSON; ``write_hf_configs`` writes
  ``tokenizer_config.json`` and ``special_tokens_map.json`` so that
  ``AutoTokenizer.from_pretrained(dir)`` loads ``tokenizer.json`` verbatim.
- ``read_hf_specials`` reads the special-token strings of a foreign HF directory;
  ``bytelevel_plain`` / ``wordpiece_plain`` build the tokenizer of GPT-2 ``vocab.json`` +
  ``merges.txt`` / a BERT ``vocab.txt`` as transformers does.
- ``split_added_tokens`` finds special-token strings in a text exactly as HF does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from data_pipeline.tokenizer.words import WHITESPACE

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPECIAL_FIELDS = ("cls", "sep", "pad", "unk", "mask")


def bpe_merges(pieces: list[str], types: list[int]) -> list[tuple[str, str]]:
    """Merges that make HF's BPE reproduce sentencepiece BPE encoding.

    sentencepiece merges, at each step, the adjacent pair whose concatenation is the
    vocabulary piece with the best score (= lowest id); any split of a piece into two
    normal pieces is such a pair, so all of them are merges of that piece's rank.
    """
    normal = {p: i for i, (p, t) in enumerate(zip(pieces, types, strict=True)) if t == NORMAL}
    ranked = []
    for piece, i in normal.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                ranked.append((i, len(left), len(right), normal[left], normal[right], left, right))
    ranked.sort(key=lambda r: r[:5])
    return [(r[5], r[6]) for r in ranked]


def spm_to_hf(proto) -> dict:
    """The HF ``tokenizers`` JSON (as a dict, no post-processor) of a sentencepiece ModelProto."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers

    pieces = [p.piece for p in proto.pieces]
    types = [p.type for p in proto.pieces]
    spec, trainer = proto.normalizer_spec, proto.trainer_spec
    byte_fallback = bool(trainer.byte_fallback)
    if trainer.model_type == 2:  # BPE
        vocab = {p: i for i, p in enumerate(pieces)}
        model = models.BPE(
            vocab=vocab,
            merges=bpe_merges(pieces, types),
            unk_token=pieces[trainer.unk_id],
            fuse_unk=True,
            byte_fallback=byte_fallback,
        )
    elif trainer.model_type == 1:  # unigram
        scores = [(p.piece, p.score) for p in proto.pieces]
        model = models.Unigram(scores, trainer.unk_id, byte_fallback)
    else:
        raise ValueError("only BPE and unigram sentencepiece models convert to tokenizer.json")
    tok = Tokenizer(model)
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [
            normalizers.Strip(left=True, right=True),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    if spec.escape_whitespaces:  # proto2 default: true
        steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(dec)
    # user-defined symbols are always cut out of the text by sentencepiece, like HF added
    # tokens matched on the raw text (normalized=False)
    tok.add_tokens(
        [
            AddedToken(p, normalized=False, special=False)
            for p, t in zip(pieces, types, strict=True)
            if t == USER_DEFINED
        ]
    )
    return json.loads(tok.to_str())


def bytelevel_plain(vocab: Path, merges: Path) -> dict:
    """GPT-2/RoBERTa ``vocab.json`` + ``merges.txt`` as HF's RobertaTokenizer builds them (no
    prefix space): plain tokenizer JSON (dict)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return json.loads(tok.to_str())


def wordpiece_plain(vocab_txt: Path, config: dict) -> dict:
    """A BERT ``vocab.txt`` as transformers' ``BertTokenizer`` builds it (BertNormalizer,
    BertPreTokenizer, WordPiece with "##"), settings from its ``tokenizer_config.json``
    (``config``; uncased by default): plain tokenizer JSON (dict)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    unk = config.get("unk_token", "[UNK]")
    unk = unk.get("content", "[UNK]") if isinstance(unk, dict) else str(unk)
    tok = Tokenizer(models.WordPiece.from_file(str(vocab_txt), unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        strip_accents=config.get("strip_accents"),
        lowercase=bool(config.get("do_lower_case", True)),
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return json.loads(tok.to_str())


def full_hf_json(
    plain: dict, specials: list[tuple[int, str, bool, bool]], cls: str, sep: str, family: str
) -> str:
    """``plain`` plus the special tokens ``(id, content, lstrip, rstrip)`` and a post-processor."""
    from tokenizers import AddedToken, Tokenizer, processors

    tok = Tokenizer.from_str(json.dumps(plain))
    for i, content, lstrip, rstrip in sorted(specials):
        tok.add_special_tokens(
            [AddedToken(content, special=True, normalized=False, lstrip=lstrip, rstrip=rstrip)]
        )
        got = tok.token_to_id(content)
        if got != i:  # ids come from the model vocabulary or are appended in id order
            raise ValueError(f"special token {content!r}: id {got} in tokenizer.json, expected {i}")
    ids = {c: i for i, c, _, _ in specials}
    # RoBERTa separates a pair with two </s>; BERT-style models with one [SEP]
    if family == "roberta":
        pair = f"{cls} $A {sep} {sep} $B {sep}"
    else:
        pair = f"{cls} $A {sep} $B:1 {sep}:1"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=pair, special_tokens=[(cls, ids[cls]), (sep, ids[sep])]
    )
    return tok.to_str(pretty=True)


def split_full_json(full: dict) -> tuple[dict, list[dict]]:
    """(plain JSON without special added tokens or post-processor, the special added tokens)."""
    plain = dict(full)
    added = full.get("added_tokens") or []
    plain["added_tokens"] = [a for a in added if not a.get("special")]
    plain["post_processor"] = None
    return plain, [a for a in added if a.get("special")]


def write_hf_configs(out_dir: Path, tokens: dict[str, str], bert_wordpiece: bool = False) -> None:
    """``tokenizer_config.json`` + ``special_tokens_map.json`` for ``tokens`` (field -> string).

    ``PreTrainedTokenizerFast`` takes ``tokenizer.json`` as it is (transformers 4 and 5);
    model-specific classes may rebuild the tokenizer from other files instead.
    ``bert_wordpiece``: BERT-uncased WordPiece; the config names ``BertTokenizerFast``, which
    loads ``tokenizer.json`` as it is too, with the BERT settings for ``vocab.txt`` readers.
    """
    named = {f"{k}_token": v for k, v in tokens.items()}
    named.update(bos_token=tokens["cls"], eos_token=tokens["sep"])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        **named,
    }
    if bert_wordpiece:
        config.update(
            tokenizer_class="BertTokenizerFast",
            do_lower_case=True,
            tokenize_chinese_chars=True,
            strip_accents=None,
        )
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", named)


def read_hf_specials(directory: Path) -> dict[str, dict]:
    """Special tokens named in a foreign directory's HF config files: field -> {content, ...}.

    ``tokenizer_config.json`` wins over ``special_tokens_map.json``; values may be strings
    or AddedToken dicts (``{"content": ..., "lstrip": ...}``).
    """
    found: dict[str, dict] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = directory / name
        if not path.is_file():
            continue
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        for field in SPECIAL_FIELDS:
            value = cfg.get(f"{field}_token") if isinstance(cfg, dict) else None
            if isinstance(value, str):
                found[field] = {"content": value}
            elif isinstance(value, dict) and isinstance(value.get("content"), str):
                found[field] = value
    return found


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def split_added_tokens(
    text: str, atoms: re.Pattern, special: dict[str, int], flags: dict[str, tuple[bool, bool]]
) -> tuple[list[str], list[int]]:
    """Cut ``text`` at special-token strings the way HF ``tokenizers`` matches added tokens.

    ``atoms`` matches every special string and every atomic non-special piece (leftmost,
    longest first); returns the n + 1 text segments around the n specials' ids. An
    ``lstrip`` special takes the whitespace before it, but never past the previous match
    (special or not); an ``rstrip`` one the whitespace after it.
    """
    segments, ids = [], []
    seg_start = bound = 0
    for m in atoms.finditer(text):
        if m.start() < seg_start:
            continue  # inside whitespace taken by an rstrip token
        sid = special.get(m.group())
        if sid is None:  # an atomic non-special piece: lstrip stops at it, as in HF
            bound = m.end()
            continue
        start, stop = m.start(), m.end()
        lstrip, rstrip = flags.get(m.group(), (False, False))
        if lstrip:
            before = text[bound:start]
            start -= len(before) - len(before.rstrip(WHITESPACE))
        if rstrip:
            stop += len(text[stop:]) - len(text[stop:].lstrip(WHITESPACE))
        segments.append(text[seg_start:start])
        ids.append(sid)
        seg_start = bound = stop
    segments.append(text[seg_start:])
    return segments, ids
