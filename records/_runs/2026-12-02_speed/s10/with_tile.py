"""train_gpt.py with CE_FP8_GRAD_TILE from the environment (CE_TILE="rows cols warps"), so one device call can
bench the tile its micro-benchmark picked. Run from the repository root: python .../with_tile.py [flags]"""
import os
import sys

sys.path.insert(0, os.getcwd())
import train_gpt  # noqa: E402

if os.environ.get("CE_TILE"):
    train_gpt.CE_FP8_GRAD_TILE = tuple(int(v) for v in os.environ["CE_TILE"].split())
    print(f"CE_FP8_GRAD_TILE = {train_gpt.CE_FP8_GRAD_TILE}", file=sys.stderr)
sys.exit(train_gpt.exit_code(train_gpt.main(sys.argv[1:]), distributed=False))
