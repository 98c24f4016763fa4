"""preprocess writes format 3: each document's sentence starts are the tokenizer's, also for
a document the reader delivers in pieces, and the manifest counts them."""

import json

import numpy as np
import webdataset as wds

from data_pipeline.preprocess import PreprocessConfig, run
from data_pipeline.readers import (
    ReadOptions,
    ReadStats,
    list_inputs,
    read_segment,
    whole_file_segment,
)
from data_pipeline.shards import FORMAT_VERSION, Manifest, ShardReader
from data_pipeline.tokenizer import Tokenizer

TEXTS = [
    "First sentence. Second one?! Third\nfourth line",
    "我爱北京。今天天气很好！你呢？ And English. Done",
    "no boundary here at all",
    # long: the reader cuts it into pieces (max_piece_chars below), at spaces and newlines
    " ".join(f"Sentence {i} ends here. it goes on\nover lines" for i in range(60)),
]


def test_shards_hold_the_tokenizers_sentence_starts(tmp_path):
    tok_dir = tmp_path / "tok"
    Tokenizer.train(TEXTS * 20, tok_dir, vocab_size=400)
    tok = Tokenizer.load(tok_dir)
    (tmp_path / "c.jsonl").write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS)
    )
    read = ReadOptions(max_piece_chars=200)
    (f,) = list_inputs([str(tmp_path / "c.jsonl")], ReadStats())
    pieces = list(read_segment(f, whole_file_segment(0, f), read, ReadStats()))
    assert len(pieces) > 10 and not pieces[3].final  # the long document comes in pieces
    out = tmp_path / "shards"
    man = run(
        PreprocessConfig(
            [str(tmp_path / "c.jsonl")],
            str(tok_dir),
            str(out),
            read=read,
        )
    )
    assert man["version"] == FORMAT_VERSION == 3
    manifest = Manifest.load(out)
    (info,) = manifest.shards
    reader = ShardReader(out, info, manifest.dtype)
    samples = list(wds.WebDataset(str(out / info.name), shardshuffle=False).decode())
    total = 0
    for i, text in enumerate(TEXTS):
        ids, words, sents = tok.encode_with_starts(text)
        got_ids, got_words = reader.read(i)
        starts = reader.read_sentences(i)
        assert got_ids.tolist() == ids.tolist()
        assert starts.tolist() == np.flatnonzero(sents).tolist(), text[:40]
        assert got_words[starts].all()  # sentence starts are word starts
        n = len(ids)
        assert np.unpackbits(samples[i]["sentence_start.npy"], count=n).sum() == len(starts)
        total += len(starts)
    assert len(reader.read_sentences(3)) == 1 + 2 * 60  # "Sentence i ..." and "it goes on"
    assert info.sentences == total == man["stats"]["sentences"]
    assert man["stats"]["splits"]["train"]["sentences"] == total
