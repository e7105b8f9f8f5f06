"""bench/proxy.sh: one arm of a proxy A/B, seeds in parallel, logs that records/compare.py reads."""
import os
import subprocess
from pathlib import Path

from records.logfile import parse_log
from tests.helpers import make_shards

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["--num_layers=2", "--model_dim=64", "--num_heads=2", "--head_dim=32", "--attn_gate_dim=8",
              "--num_value_embeds=1", "--skips=unet", "--no_attention_layers=", "--value_embed_layers=", "--xsa_layers=1",
              "--paired_head_layers=0", "--backout_layer=0", "--attn_source=0", "--fp8_head=false",
              "--fp8_mlp=false", "--val_window_blocks=", "--window_pattern=SL", "--window_blocks=1:1", "--seq_lens=128",
              "--val_tokens=2048", "--val_seq_len=512", "--num_iterations=3", "--val_every=0", "--warmup_steps=0"]


def test_proxy_script_trains_each_seed_into_one_folder(tmp_path):
    make_shards(tmp_path / "data", train_tokens=20_000, val_tokens=4_000)
    env = {**os.environ, "DATA": str(tmp_path / "data"), "SEEDS": "2", "PARALLEL": "2", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "arm"
    result = subprocess.run([str(ROOT / "bench" / "proxy.sh"), str(out), *TINY_MODEL], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    runs = {p.name: parse_log(p) for p in sorted(out.glob("*.txt"))}
    assert list(runs) == ["arm_seed0.txt", "arm_seed1.txt"]
    for name, run in runs.items():
        assert run.status == "complete" and run.hparams["seed"] == name[-5] and run.hparams["slices_per_step"] == "1"
    assert result.stdout.count("final_val_loss:") == 2


def test_proxy_script_names_missing_data(tmp_path):
    env = {**os.environ, "DATA": str(tmp_path / "nothing")}
    result = subprocess.run([str(ROOT / "bench" / "proxy.sh"), str(tmp_path / "arm")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and f"no validation shards in {tmp_path / 'nothing'}" in result.stderr
