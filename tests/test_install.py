"""Static checks of how the project installs (no Docker daemon, no package index): the requirement pins, the Docker
image's recipe and build context, and that README, CI and the Dockerfile agree."""
import fnmatch
import posixpath
import re
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dockerignored(path: str) -> bool:
    """True when a pattern of .dockerignore matches path or a folder above it (no `!` exceptions are used)."""
    patterns = [line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes for pattern in patterns)


@pytest.mark.parametrize("path", [
    ".git/objects/pack/pack-1.pack", "data/fineweb10B/fineweb_train_000001.bin", "data/shards/mytext_val_000000.bin",
    "data/mytext/fineweb_val_000000.bin", "logs/0a1b2c.txt", "checkpoints/state_step001750.pt", ".venv/bin/python",
    "venv/bin/python", "data/__pycache__/shards.cpython-311.pyc", ".pytest_cache/v/cache/lastfailed",
    "data/fineweb10B/.cache/huggingface/download/fineweb_train_000001.bin.incomplete"])
def test_dockerignore_leaves_out_heavy_paths(path):
    assert dockerignored(path)


@pytest.mark.parametrize("path", ["train_gpt.py", "run.sh", "requirements.txt", "requirements-base.txt",
                                  "data/cached_fineweb10B.py", "data/shards.py", "data/tokenize_text.py",
                                  "records/recover.py"])
def test_dockerignore_keeps_what_the_image_runs(path):
    assert not dockerignored(path)


def requirement_files(name: str) -> list[str]:
    """name and every file it pulls in with -r, relative to the repo root."""
    files = [name]
    for line in (ROOT / name).read_text().splitlines():
        if line.startswith("-r "):
            files += requirement_files(posixpath.normpath(PurePosixPath(name).parent / line[3:].strip()))
    return files


def test_dockerfile_installs_exactly_requirements_txt_after_copying_every_file_it_names():
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    installs = [i for i, line in enumerate(lines) if "pip install" in line]
    assert len(installs) == 1
    assert re.fullmatch(r"RUN pip install --no-cache-dir -r requirements\.txt", lines[installs[0]])
    copied = {word for line in lines[:installs[0]] if line.startswith("COPY ") for word in line.split()[1:-1]}
    assert set(requirement_files("requirements.txt")) <= copied


def test_dockerfile_installs_a_c_compiler_for_triton():
    apt = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if "apt-get install" in line]
    assert any(re.search(r"\b(build-essential|gcc)\b", line) for line in apt)


def test_readme_docker_run_mounts_the_repo_over_the_image_workdir():
    workdir = re.search(r"^WORKDIR (\S+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    runs = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("docker run ")]
    assert runs
    for line in runs:
        assert f'-v "$PWD":{workdir} ' in line and "--gpus all" in line


def requirement_lines(name: str) -> list[str]:
    """The requirements that name installs, its -r files included (comments and -r lines dropped)."""
    lines = []
    for file in requirement_files(name):
        lines += [line.split("#")[0].strip() for line in (ROOT / file).read_text().splitlines()
                  if line.split("#")[0].strip() and not line.startswith("-r ")]
    return lines


@pytest.mark.parametrize("name, torch, triton", [("requirements.txt", "torch==2.11.0", "triton==3.6.0"),
                                                 ("tests/requirements.txt", "torch==2.13.0", "triton==3.6.0")])
def test_requirements_pin_torch_and_triton_and_bound_numpy(name, torch, triton):
    lines = requirement_lines(name)
    assert [line for line in lines if re.match(r"(torch|triton)\b", line)] == [torch, triton]
    assert "numpy<2.3" in lines
    assert "requirements-base.txt" in requirement_files(name)


def test_readme_and_ci_install_the_same_test_requirements():
    readme = (ROOT / "README.md").read_text()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install" in line]
    assert "pip install -r tests/requirements.txt && python -m pytest -q" in readme
    assert len(ci) == 1
    assert [word for word in ci[0].split("pip install")[1].split() if not word.startswith("--")] == [
        "-r", "tests/requirements.txt"]
    assert "pip install -r requirements.txt && python data/cached_fineweb10B.py 9 && ./run.sh" in readme
