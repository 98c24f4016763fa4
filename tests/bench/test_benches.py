"""The bench scripts run end to end (tiny ``--quick`` configs, CPU) and write well-formed
RESULTS sections to a temporary file; the HF side of the throughput bench is the same
network as ours; a failing bench side is reported, not fatal. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
HEADING = re.compile(
    r"^### bench/(\w+)\.py: \d{4}-\d{2}-\d{2}, commit \S+.* \(--quick: not a measurement\)$"
)


def sections(text: str) -> dict[str, list[str]]:
    """{script name: its lines} of a RESULTS file (each script once in these tests)."""
    out, name = {}, None
    for line in text.splitlines():
        m = HEADING.match(line)
        if line.startswith("### "):
            assert m, f"malformed heading: {line}"
            name = m.group(1)
            assert name not in out, f"{name} appended twice"
            out[name] = []
        elif name is not None:
            out[name].append(line)
    return out


def tables(lines: list[str]) -> list[list[list[str]]]:
    """Markdown tables in ``lines`` as rows of cells (header first), checking their shape."""
    found, cur = [], None
    for line in [*lines, ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            cur = (cur or []) + [cells]
        elif cur is not None:
            assert len(cur) >= 3, "a table needs a header, a rule and a row"
            assert all(re.fullmatch(r"-{3,}:?", c) for c in cur[1]), cur[1]
            assert {len(r) for r in cur} == {len(cur[0])}, "ragged table"
            found.append([cur[0], *cur[2:]])
            cur = None
    return found


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> dict[str, list[str]]:
    """``bash bench/run_all.sh --quick`` into a temporary RESULTS file (~30 s)."""
    out = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    res = subprocess.run(
        ["bash", str(BENCH / "run_all.sh"), "--quick", "--results", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "failed" not in res.stdout
    return sections(out.read_text())


def test_every_bench_writes_a_section(quick_results):
    assert set(quick_results) == {"preprocess", "loader", "model_step", "train_throughput"}
    for name, lines in quick_results.items():
        assert any(line.startswith("Machine: ") for line in lines), name
        assert tables(lines), f"{name}: no table"


def test_model_step_and_loader_tables(quick_results):
    (step,) = tables(quick_results["model_step"])
    assert [r[0] for r in step[1:]] == ["roberta", "electra", "deberta", "bert", "albert"]
    for r in step[1:]:
        assert float(r[2]) > 0 and float(r[3]) > 0  # ours ms, HF ms
    (loader,) = tables(quick_results["loader"])
    assert len(loader) == 7 and all(r[3].endswith(" M") for r in loader[1:])
    assert loader[4][0] == "ours: the first row with reads unchecked"
    assert any(
        ln.startswith("Checking every byte read against its crc32 costs")
        for ln in quick_results["loader"]
    )
    assert len(tables(quick_results["preprocess"])) == 2


def test_train_throughput_table(quick_results):
    (tab,) = tables(quick_results["train_throughput"])
    header, rows = tab[0], tab[1:]
    assert header[:4] == ["arch", "side", "preset", "tokens/s"]
    assert [(r[0], r[1].split(",")[0]) for r in rows] == [
        (a, s) for a in ("roberta", "deberta", "electra", "bert", "albert") for s in ("ours", "hf")
    ]
    for r in rows:
        assert not r[3].startswith("failed"), r
        assert float(r[3].replace(",", "")) > 0  # tokens/s
        assert r[5] == "n/a"  # no MFU without a GPU peak
        assert re.fullmatch(r"[\d.]+ [kMG]B", r[6]) and re.fullmatch(r"[\d.]+%", r[7])
    for hf in rows[1::2]:
        assert re.fullmatch(r"\d+\.\d\dx", hf[8]), hf  # ours / HF
    text = "\n".join(quick_results["train_throughput"])
    assert "DeepSpeed ZeRO 1" in text and "Model FLOPs per token" in text


def test_throughput_child_reports_failure(tmp_path):
    """A side that cannot run prints a one-line reason (the parent tables it) and exits 1."""
    spec = {"shard_dir": str(tmp_path / "missing"), "side": "ours", "arch": "roberta"}
    spec.update(preset="roberta-debug", overrides={}, seq=32, micro=2, global_batch=2)
    spec.update(precision="fp32", zero=1, workers=0, optimizer_impl="torch", mask_prob=0.15)
    spec.update(steps=1, warmup=0, attend_within_document=True, compile=False)
    spec.update(predict_capacity="auto")
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    res = subprocess.run(
        [sys.executable, str(BENCH / "throughput_child.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1
    (line,) = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line[len("RESULT ") :])
    assert out["ok"] is False and "missing" in out["error"] and "\n" not in out["error"]


def _hf_models():
    spec = importlib.util.spec_from_file_location("bench_hf_models", BENCH / "hf_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("arch", ["roberta", "deberta", "electra", "bert", "albert"])
def test_hf_twin_is_the_same_network(arch, monkeypatch):
    """The HF side computes our model's losses (eval mode, same weights): the throughput
    bench compares implementations of one network, not two networks."""
    from pretrain.models import build_model, electra

    hf_models = _hf_models()
    pick = torch.no_grad()(lambda logits: logits.float().argmax(-1))  # deterministic sampling
    monkeypatch.setattr(hf_models, "sample_replacements", pick)
    monkeypatch.setattr(electra, "sample_replacements", pick)
    torch.manual_seed(0)
    extra = {"objective": "mlm"} if arch == "deberta" else {}
    ours = build_model(arch, f"{arch}-debug", vocab_size=400, **extra).eval()
    hf = hf_models.hf_twin(arch, ours).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 400, (2, 24), generator=g)
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.3, ids, -100)
    attn = torch.ones_like(ids)
    attn[1, 20:] = 0
    labels[1, 20:] = -100
    pair = {}
    if arch in ("bert", "albert"):  # token types A | B and one sentence label per row
        types = (torch.arange(24) >= 12).long().expand(2, 24) * attn
        pair = {"token_type_ids": types, "sentence_labels": torch.tensor([1, 0])}
    with torch.no_grad():
        a, b = ours(ids, attn, labels, **pair), hf(ids, attn, labels, **pair)
    keys = ["mlm_loss_sum", "mlm_count"] + (
        ["rtd_loss_sum", "rtd_count"] if arch == "electra" else []
    )
    keys += ["sentence_loss_sum", "sentence_count"] if pair else []
    for k in keys:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=1e-4, atol=1e-4, msg=k)


def _bench_module(name: str):
    sys.path.insert(0, str(BENCH))  # the bench scripts import their siblings by name
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


@pytest.mark.parametrize("arch", ["roberta", "deberta", "electra"])
def test_quality_hf_side_is_the_same_network(arch, tmp_path, monkeypatch):
    """The quality bench's HF side (MLM head on the predicted positions only, the ELECTRA pair
    sharing embeddings) computes our sums, RTD counts included, given our weights."""
    import transformers

    from pretrain.models import build_model, electra, hf_module

    q = _bench_module("quality_hf")
    pick = torch.no_grad()(lambda logits: logits.float().argmax(-1))
    monkeypatch.setattr(q, "sample_replacements", pick)
    monkeypatch.setattr(electra, "sample_replacements", pick)
    torch.manual_seed(0)
    extra = {"objective": "mlm"} if arch == "deberta" else {}
    ours = build_model(arch, f"{arch}-debug", vocab_size=400, **extra).eval()
    hf_module(arch).export_hf(ours, tmp_path)
    if arch == "electra":
        disc = transformers.ElectraForPreTraining.from_pretrained(tmp_path)
        gen = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "generator")
        hf = q.HFSide(arch, gen, disc).eval()
    else:
        hf = q.HFSide(arch, transformers.AutoModelForMaskedLM.from_pretrained(tmp_path)).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 400, (2, 24), generator=g)
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.3, ids, -100)
    attn = torch.ones_like(ids)
    attn[1, 20:], labels[1, 20:] = 0, -100
    with torch.no_grad():
        a, b = ours(ids, attn, labels), hf(ids, attn, labels)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=1e-4, atol=1e-4, msg=k)


def test_quality_bench_quick(tmp_path):
    """bench/quality.py --quick: every side of two architectures trains, the HF side saw the
    trainer's rows, the tables are well formed (RTD: precision and recall columns)."""
    out = tmp_path / "RESULTS.md"
    res = subprocess.run(
        [sys.executable, str(BENCH / "quality.py"), "--quick", "--arch", "roberta,electra",
         "--work", str(tmp_path / "work"), "--results", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (lines,) = sections(out.read_text()).values()
    mlm, rtd, curve = tables(lines)
    assert [(r[0], r[2].split(" ")[0]) for r in mlm[1:]] == [
        (a, s) for a in ("roberta", "electra") for s in ("ours", "ours", "ours", "HF")
    ]
    assert all(float(r[5]) > 0 for r in mlm[1:])
    assert "precision" in rtd[0] and "recall" in rtd[0] and len(rtd) == 4
    assert "0 differing" in "\n".join(lines) and len(curve) >= 2


def test_quality_ablations_quick(tmp_path):
    out = tmp_path / "RESULTS.md"
    res = subprocess.run(
        [sys.executable, str(BENCH / "quality_ablations.py"), "--quick", "--work",
         str(tmp_path / "work"), "--results", str(out), "--only", "ours-rows,hf-model,hf-pipeline"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ((header, *rows),) = tables(next(iter(sections(out.read_text()).values())))
    assert [r[0] for r in rows] == ["ours-rows", "hf-model", "hf-pipeline"]
    assert rows[0][3] == "+0.000" and float(rows[1][2]) > 0
