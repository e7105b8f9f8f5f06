"""Where the model line of the warm start goes (session 10): seconds for CUDA's context, the record model built on
the GPU twice (the second without first-use costs), and the optimizers. Run from the repository root."""
import os
import sys
import time

sys.path.insert(0, os.getcwd())  # call 2 ran it without this (and without PYTHONPATH=.): it found no train_gpt
t0 = time.perf_counter()
import torch  # noqa: E402
import train_gpt as T  # noqa: E402

t1 = time.perf_counter()
torch.zeros(1, device="cuda")
torch.cuda.synchronize()
t2 = time.perf_counter()
hp = T.parse_args([])
device = torch.device("cuda")
marks = {}
for i in range(2):
    s = time.perf_counter()
    model = T.build_model(hp, device, micro_steps=8)
    torch.cuda.synchronize()
    marks[f"model_{i}"] = time.perf_counter() - s
s = time.perf_counter()
T.build_optimizers(model, hp, 0, 1)
torch.cuda.synchronize()
marks["optimizers"] = time.perf_counter() - s
print(f"info:startup imports {t1 - t0:.2f} s, cuda context {t2 - t1:.2f} s, "
      + ", ".join(f"{k} {v:.2f} s" for k, v in marks.items()))
