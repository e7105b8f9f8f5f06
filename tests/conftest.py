import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Triton kernels run under Triton's CPU interpreter when there is no GPU; it must be chosen before the
# kernels are defined, i.e. before train_gpt is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run `pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_dynamo(request):
    """Each GPU test compiles from an empty Dynamo. Dynamo keeps at most recompile_limit (8) graphs of one function
    per process and runs a call that matches none of them eagerly, without a word: in one process, the GPU tests
    compile GPT.forward for more than eight configurations, so a later test could compare eager against compiled
    where it means compiled against compiled, or eager against eager where it means the compiled graph (session 13:
    test_fp8_head_matches_bf16_head_on_gpu[True], run after six other compiled tests, found the two validation losses
    2e-4 apart where both arms run the same bf16 head, most likely one compiled and one eager)."""
    if "gpu" in request.keywords and torch.cuda.is_available():
        torch._dynamo.reset()
    yield
