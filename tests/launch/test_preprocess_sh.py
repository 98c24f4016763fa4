"""launch/preprocess.sh: runs mpirun with the flags its MPI flavour needs, arguments passed through."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "preprocess.sh"
MPIRUN = Path(sys.executable).parent / "mpirun"


def fake_mpirun(tmp_path: Path, version: str) -> Path:
    """An 'mpirun' that reports ``version`` and records its arguments instead of running."""
    f = tmp_path / "mpirun"
    f.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = "--version" ]; then echo "{version}"; exit 0; fi\n'
        f'printf "%s\\n" "$@" > {tmp_path / "args"}\n'
    )
    f.chmod(0o755)
    return f


def run_script(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


@pytest.mark.parametrize(
    "flavour", ["mpirun (Open MPI) 4.1.6", "HYDRA build details: Version: 4.2"]
)
def test_flags_follow_the_mpi_flavour(tmp_path, flavour):
    mpirun = fake_mpirun(tmp_path, flavour)
    p = run_script(
        {"MPIRUN": str(mpirun), "NPROC": "3", "PYTHON": "py"}, "--input", "a b", "--out", "o"
    )
    assert p.returncode == 0, p.stderr
    args = (tmp_path / "args").read_text().splitlines()
    tail = ["-n", "3", "py", "-m", "data_pipeline", "preprocess", "--input", "a b", "--out", "o"]
    assert args[-len(tail) :] == tail
    if "Open MPI" in flavour:
        assert "--oversubscribe" in args
        assert ("--allow-run-as-root" in args) == (os.geteuid() == 0)
    else:
        assert args == tail


def test_missing_launcher_is_a_clear_error(tmp_path):
    p = run_script({"MPIRUN": str(tmp_path / "no-such-mpirun")}, "--input", "x")
    assert p.returncode == 2 and "not found" in p.stderr


@pytest.mark.slow
def test_two_ranks_through_the_script_match_one_process(tmp_path):
    if not MPIRUN.exists():
        pytest.skip("mpirun not installed in the venv (pip install mpich)")
    words = [f"w{i}" for i in range(40)]
    docs = [" ".join(words[(i * 7 + j) % 40] for j in range(5 + i % 30)) for i in range(400)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    Tokenizer.train(docs, tmp_path / "tok", vocab_size=300)
    args = [
        "--input",
        str(tmp_path / "c.jsonl"),
        "--tokenizer",
        str(tmp_path / "tok"),
        "--unit-bytes",
        "8K",
    ]
    env = {"MPIRUN": str(MPIRUN), "NPROC": "2", "PYTHON": sys.executable}
    p = run_script(env, *args, "--out", str(tmp_path / "mpi"))
    assert p.returncode == 0, p.stderr
    assert "2 rank(s)" in p.stdout
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipeline",
            "preprocess",
            *args,
            "--out",
            str(tmp_path / "one"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr

    def digest(d: Path) -> dict:
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.glob("*"))
            if p.is_file()
        }

    assert digest(tmp_path / "mpi") == digest(tmp_path / "one")
    assert len(digest(tmp_path / "one")) > 4
