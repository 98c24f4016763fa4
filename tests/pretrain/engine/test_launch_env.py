"""Launcher detection without launching: torchrun/DeepSpeed variables, ``srun`` tasks (with a
stub ``scontrol``), the NCCL defaults. Real launches: tests/pretrain/test_distributed.py and
tests/launch/."""

import os
import subprocess
import sys

import pytest

from pretrain.config import ConfigError
from pretrain.engine import launch_env as le
from pretrain.testing import REPO


def test_a_plain_process_is_not_launched():
    env = {"PATH": "/usr/bin", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "8", "SLURM_PROCID": "0"}
    assert not le.launched(env)  # a batch script's own shell is not a rank of the step
    assert env.keys() == {"PATH", "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID"}


def test_torchrun_and_deepspeed_variables_are_taken_as_they_are():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h"}
    assert le.launched(env) and env["LOCAL_RANK"] == "0"
    assert le.local_world_size(env) == 2 and le.local_world_size({}, default=5) == 5


def test_an_srun_task_gets_rank_world_and_master_from_slurm(tmp_path, monkeypatch):
    stub = tmp_path / "scontrol"
    stub.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "gpu-07\\ngpu-08\\n"\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    env = {
        "SLURM_JOB_ID": "123456",
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_STEP_NUM_TASKS": "16",
        "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
        "SLURM_STEP_NODELIST": "gpu-[07-08]",
    }
    assert le.launched(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("9", "16", "1")
    assert env["LOCAL_WORLD_SIZE"] == "8" and env["MASTER_ADDR"] == "gpu-07"
    assert env["MASTER_PORT"] == str(20000 + 123456 % 20000)
    assert le._expand_tasks_per_node("4(x2),3") == [4, 4, 3]


def test_an_srun_task_without_a_master_address_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    env = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_NODELIST": "n1"}
    with pytest.raises(ConfigError, match="srun: set MASTER_ADDR"):
        le.launched(env)
    env = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "MASTER_ADDR": "10.0.0.1"}
    assert le.launched(env) and env["MASTER_ADDR"] == "10.0.0.1"


def test_nccl_defaults_do_not_override_the_user_and_match_the_scripts():
    env = {"NCCL_DEBUG": "INFO"}
    le.apply_env_defaults(env)
    assert env == {**le.NCCL_DEFAULTS, "NCCL_DEBUG": "INFO"}
    for script in ("launch/pretrain.sh", "launch/elastic.sh", "launch/slurm/pretrain.sbatch"):
        text = (REPO / script).read_text()
        for key, value in le.NCCL_DEFAULTS.items():
            assert f'export {key}="${{{key}:-{value}}}"' in text, (script, key)


def test_mpi_discovery_in_a_single_mpi_process():
    """One MPI process (a singleton, no mpirun): the variables it derives; a MASTER_ADDR set
    by the user wins over rank 0's first address."""
    pytest.importorskip("mpi4py")
    code = (
        "import os; from pretrain.engine import launch_env as le; env = {'PMI_SIZE': '1', "
        "'MASTER_ADDR': '127.0.0.9'}; assert le.launched(env); "
        "print(env['RANK'], env['WORLD_SIZE'], env['LOCAL_RANK'], env['LOCAL_WORLD_SIZE'], "
        "env['MASTER_ADDR'], env['MASTER_PORT'])"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["0", "1", "0", "1", "127.0.0.9", "29500"]
