"""data/cached_fineweb10B.py against a stand-in hub: a local HTTP server speaking the hub's resolve API, reached
through HF_ENDPOINT, so the real huggingface_hub download code runs."""
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from data.shards import shard_problem, write_shard

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data" / "cached_fineweb10B.py"
REPO = "kjj0/fineweb10B-gpt2"


def shard_bytes(tmp_path: Path, name: str, n_tokens: int, seed: int) -> bytes:
    path = tmp_path / f"src_{name}"
    write_shard(path, np.random.default_rng(seed).integers(0, 50257, n_tokens))
    return path.read_bytes()


class FakeHub(http.server.ThreadingHTTPServer):
    """Serves files: {name: bytes} at /datasets/<repo>/resolve/<revision>/<name>; logs every HEAD and GET."""

    def __init__(self, files):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.files, self.heads, self.gets = files, [], []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class HubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _resolve(self):
        prefix = f"/datasets/{REPO}/resolve/main/"
        name = self.path[len(prefix):] if self.path.startswith(prefix) else None
        body = self.server.files.get(name)
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", "a" * 40)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None, None
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][6:].split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", "a" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        return name, body[start:]

    def do_HEAD(self):
        self.server.heads.append(self.path)
        self._resolve()

    def do_GET(self):
        name, body = self._resolve()
        if name is not None:
            self.server.gets.append(name)
            self.wfile.write(body)


@pytest.fixture
def hub(tmp_path):
    files = {"fineweb_val_000000.bin": shard_bytes(tmp_path, "val", 3000, 0)}
    for i in (1, 2):
        files[f"fineweb_train_{i:06d}.bin"] = shard_bytes(tmp_path, f"train{i}", 5000 + i, i)
    server = FakeHub(files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def run_script(endpoint, local_dir, *args, **env_vars):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(local_dir / "hf_home"), **env_vars)
    # Every back-off (ours or the hub client's) is skipped and its seconds reported on the last line of stderr.
    prelude = ("import atexit, sys, time; slept = []; time.sleep = slept.append; "
               "atexit.register(lambda: print(f'slept:{sum(slept)}', file=sys.stderr)); ")
    code = (f"{prelude}import runpy; sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:]; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, *args, "--local_dir", str(local_dir), "--repo_id", REPO],
                          env=env, capture_output=True, text=True, timeout=120)


def test_download_fetches_val_and_first_n_train_shards(hub, tmp_path):
    out = tmp_path / "fineweb10B"
    result = run_script(hub.url, out, "2")
    assert result.returncode == 0, result.stderr
    for name, body in hub.files.items():
        assert (out / name).read_bytes() == body
        assert shard_problem(out / name) is None
    assert sorted(hub.gets) == sorted(hub.files)


def test_download_fetches_only_n_train_shards(hub, tmp_path):
    out = tmp_path / "fineweb10B"
    assert run_script(hub.url, out, "1").returncode == 0
    assert sorted(p.name for p in out.glob("*.bin")) == ["fineweb_train_000001.bin", "fineweb_val_000000.bin"]


def test_download_skips_complete_files(hub, tmp_path):
    out = tmp_path / "fineweb10B"
    out.mkdir()
    (out / "fineweb_val_000000.bin").write_bytes(hub.files["fineweb_val_000000.bin"])
    result = run_script(hub.url, out, "2")
    assert result.returncode == 0, result.stderr
    assert sorted(hub.gets) == ["fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert "1 already complete" in result.stdout
    hub.gets.clear()
    assert run_script(hub.url, out, "2").returncode == 0
    assert hub.gets == []


def test_download_refetches_truncated_file(hub, tmp_path):
    out = tmp_path / "fineweb10B"
    assert run_script(hub.url, out, "2").returncode == 0
    path = out / "fineweb_train_000002.bin"
    path.write_bytes(hub.files[path.name][:-100])
    hub.gets.clear()
    result = run_script(hub.url, out, "2")
    assert result.returncode == 0, result.stderr
    assert "truncated" in result.stderr
    assert hub.gets == [path.name]
    assert path.read_bytes() == hub.files[path.name]


def test_download_rejects_corrupt_file_from_hub(hub, tmp_path):
    bad = bytearray(hub.files["fineweb_train_000001.bin"])
    bad[:4] = (12345).to_bytes(4, "little")
    hub.files["fineweb_train_000001.bin"] = bytes(bad)
    out = tmp_path / "fineweb10B"
    result = run_script(hub.url, out, "2")
    assert result.returncode != 0
    assert "fineweb_train_000001.bin" in result.stderr and REPO in result.stderr
    assert "bad magic: expected 20240520, found 12345" in result.stderr
    assert not (out / "fineweb_train_000001.bin").exists()


def test_download_names_missing_file(hub, tmp_path):
    result = run_script(hub.url, tmp_path / "fineweb10B", "3")
    assert result.returncode != 0
    assert "fineweb_train_000003.bin is not in the Hugging Face dataset " + REPO in result.stderr


def error_line(result) -> str:
    """The script's last line before the back-off report."""
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("slept:"), result.stderr
    return lines[-2]


def test_download_unreachable_hub_fails_at_once_with_clear_message(tmp_path):
    server = FakeHub({})  # bind a port, then close it: nothing listens there
    endpoint = server.url
    server.server_close()
    start = time.monotonic()
    result = run_script(endpoint, tmp_path / "fineweb10B", "1")
    assert time.monotonic() - start < 30  # generous: it makes one refused connection
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "slept:0"  # no back-off, neither ours nor the hub client's
    last = error_line(result)
    assert last.startswith("error: cannot reach the Hugging Face hub to download fineweb_val_000000.bin from " + REPO)
    assert "HF_ENDPOINT" in last and "Offline use" in last


def test_download_offline_mode_names_missing_shards_without_asking_hub(hub, tmp_path):
    out = tmp_path / "fineweb10B"
    out.mkdir()
    (out / "fineweb_val_000000.bin").write_bytes(hub.files["fineweb_val_000000.bin"])
    (out / "fineweb_train_000002.bin").write_bytes(hub.files["fineweb_train_000002.bin"][:-2])
    result = run_script(hub.url, out, "2", HF_HUB_OFFLINE="1")
    assert result.returncode != 0
    assert error_line(result) == (
        f"error: HF_HUB_OFFLINE is set and 2 shard(s) are missing or incomplete in {out}: fineweb_train_000001.bin, "
        f"fineweb_train_000002.bin. Copy them there (README: Offline use), or unset HF_HUB_OFFLINE to download them.")
    assert hub.heads == [] and hub.gets == []


def test_download_offline_mode_accepts_complete_shards(hub, tmp_path):
    out = tmp_path / "fineweb10B"
    out.mkdir()
    for name, body in hub.files.items():
        (out / name).write_bytes(body)
    result = run_script(hub.url, out, "2", HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr
    assert "(0 downloaded, 3 already complete)" in result.stdout
    assert hub.heads == [] and hub.gets == []


def test_download_lost_connection_is_left_to_hub_client_retries(tmp_path, monkeypatch, capsys):
    """The hub answers the first request, then hf_hub_download gives up (after its own retries): the script stops
    with one clear line instead of retrying the whole download on top."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from data import cached_fineweb10B

    calls = []

    def lost(repo_id, filename, **kwargs):
        calls.append(filename)
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache") from ConnectionError(
            "[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kwargs: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lost)
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail(f"slept {s} s"))
    with pytest.raises(SystemExit) as e:
        cached_fineweb10B.main(["1", "--local_dir", str(tmp_path / "fineweb10B"), "--repo_id", REPO])
    assert calls == ["fineweb_val_000000.bin"]
    assert str(e.value).startswith(f"error: cannot reach the Hugging Face hub to download fineweb_val_000000.bin "
                                   f"from {REPO}: LocalEntryNotFoundError: cannot find the requested files in the "
                                   f"local cache ([Errno -2] Name or service not known).")
