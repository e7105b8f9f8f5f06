"""train_gpt.py with RELU_SQ_MATMUL_CONFIGS["fp8"] from the environment (FP8_MLP_CONFIG="BLOCK_M BLOCK_N BLOCK_K warps
stages"), so one device call can bench the tile its micro-benchmark picked. Run from the repository root:
python .../with_config.py [flags]"""
import os
import sys

sys.path.insert(0, os.getcwd())
import train_gpt  # noqa: E402

if os.environ.get("FP8_MLP_CONFIG"):
    train_gpt.RELU_SQ_MATMUL_CONFIGS["fp8"] = tuple(int(v) for v in os.environ["FP8_MLP_CONFIG"].split())
    print(f"RELU_SQ_MATMUL_CONFIGS['fp8'] = {train_gpt.RELU_SQ_MATMUL_CONFIGS['fp8']}", file=sys.stderr)
sys.exit(train_gpt.exit_code(train_gpt.main(sys.argv[1:]), distributed=False))
