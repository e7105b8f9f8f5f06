"""run.sh's checks before it launches: a stand-in `python3` reports the GPU count (FAKE_GPUS) and stand-ins for
torchrun and `python3 -m torch.distributed.run` write the command they were given, so nothing trains."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECORD = 'printf "%s\\n" "$*" >> "$LAUNCHED"'


def fake_bin(folder: Path, with_torchrun: bool) -> Path:
    folder.mkdir()
    (folder / "python3").write_text('#!/bin/sh\nif [ "$1" = -c ]; then echo "$FAKE_GPUS"; exit 0; fi\n'
                                    f"{RECORD.replace('$*', 'python3 $*')}\n")
    if with_torchrun:
        (folder / "torchrun").write_text(f"#!/bin/sh\n{RECORD.replace('$*', 'torchrun $*')}\n")
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return folder


def run_sh(tmp_path, *args, gpus, nproc=None, with_torchrun=True, real_python=False):
    """Runs run.sh; returns (result, launched command lines)."""
    launched = tmp_path / "launched.txt"
    fakes = fake_bin(tmp_path / "bin", with_torchrun)
    if real_python:
        (fakes / "python3").unlink()
    path = [str(fakes)] + ([str(Path(sys.executable).parent)] if real_python else []) + ["/usr/bin", "/bin"]
    env = {k: v for k, v in os.environ.items() if k != "NPROC"}
    env.update(PATH=os.pathsep.join(path), FAKE_GPUS=str(gpus), LAUNCHED=str(launched))
    if nproc is not None:
        env["NPROC"] = str(nproc)
    result = subprocess.run([str(ROOT / "run.sh"), *args], env=env, capture_output=True, text=True, timeout=120)
    return result, launched.read_text().splitlines() if launched.exists() else []


def torchrun(nproc, *args):
    return f"torchrun --standalone --nproc_per_node={nproc} train_gpt.py" + "".join(f" {a}" for a in args)


def test_run_sh_without_gpu_refuses_record_model_and_names_tiny_preset(tmp_path):
    result, launched = run_sh(tmp_path, "--num_iterations=5", gpus=0)
    assert result.returncode == 1
    assert launched == []
    assert "no GPU visible" in result.stderr and "./run.sh --preset=tiny" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_run_sh_without_gpu_runs_tiny_preset_as_one_process(tmp_path):
    result, launched = run_sh(tmp_path, "--preset=tiny", "--num_iterations=5", gpus=0)
    assert result.returncode == 0, result.stderr
    assert launched == [torchrun(1, "--preset=tiny", "--num_iterations=5")]


@pytest.mark.parametrize("gpus, nproc, expected", [(8, None, 8), (4, None, 4), (1, None, 1), (8, 2, 2), (0, 2, 2)])
def test_run_sh_launches_one_process_per_gpu(tmp_path, gpus, nproc, expected):
    result, launched = run_sh(tmp_path, "--preset=tiny", gpus=gpus, nproc=nproc)
    assert result.returncode == 0, result.stderr
    assert launched == [torchrun(expected, "--preset=tiny")]


@pytest.mark.parametrize("gpus, nproc, fit", [(3, None, 2), (6, None, 4), (8, 3, 8), (16, None, 8), (0, 5, 1)])
def test_run_sh_refuses_process_count_that_does_not_divide_8_slices(tmp_path, gpus, nproc, fit):
    result, launched = run_sh(tmp_path, "--preset=tiny", gpus=gpus, nproc=nproc)
    assert result.returncode == 1
    assert launched == []
    assert result.stderr.splitlines() == [
        f"run.sh: NPROC={nproc or gpus} ({gpus} GPUs visible) does not fit: a step is 8 slices, split evenly over "
        f"the processes, so their count must divide 8 (1, 2, 4, 8); e.g. NPROC={fit} ./run.sh"]


def test_run_sh_reads_slices_per_step_flag(tmp_path):
    result, launched = run_sh(tmp_path, "--slices_per_step=16", gpus=16)
    assert result.returncode == 0, result.stderr
    assert launched == [torchrun(16, "--slices_per_step=16")]


def test_run_sh_refuses_more_processes_than_gpus(tmp_path):
    result, launched = run_sh(tmp_path, gpus=4, nproc=8)
    assert result.returncode == 1
    assert launched == []
    assert result.stderr.strip() == "run.sh: NPROC=8 but only 4 GPUs are visible; one process per GPU"


def test_run_sh_uses_torch_distributed_run_without_torchrun_on_path(tmp_path):
    result, launched = run_sh(tmp_path, "--num_iterations=5", gpus=2, with_torchrun=False)
    assert result.returncode == 0, result.stderr
    assert launched == ["python3 -m torch.distributed.run --standalone --nproc_per_node=2 train_gpt.py "
                        "--num_iterations=5"]


def test_run_sh_counts_gpus_with_real_torch(tmp_path):
    result, launched = run_sh(tmp_path, "--preset=tiny", gpus="unused", real_python=True)
    assert result.returncode == 0, result.stderr
    assert launched == [torchrun(max(torch.cuda.device_count(), 1), "--preset=tiny")]
