"""Micro-bench 8: a micro-step's row-table gradient added into its running sum, (49152, 768) fp32 values at the rows
of real text (the first 49152 tokens of a proxy train shard): the embedding's rows (tokens) and the bigram table's
(their hashed pairs). index_add_ (what RowTable used in call 1) against the Triton kernel, unsorted and sorted
(segmented sums), at several tiles. Prints the best config, as `best_add_rows_config: sort block_t block_d warps`."""
import glob
import torch
import train_gpt as T

tokens = T.read_shard(sorted(glob.glob("/tmp/shards/*_train_*.bin"))[0])[:49152].cuda().int()
cases = {"embed": (50304, tokens), "bigram": (377280, T.bigram_hash(tokens, 377280))}
values = torch.randn(49152, 768, device="cuda")


def timed(fn, reps=20):
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1000


configs = [(s, bt, bd, w) for s in (False, True) for bt, bd, w in
           [(32, 128, 4), (64, 128, 4), (64, 256, 8), (128, 128, 8), (128, 64, 4), (256, 64, 8)]]
totals = {name: 0.0 for name in ["index_add"] + [str(c) for c in configs]}
for name, (n, rows) in cases.items():
    print(f"{name}: {rows.unique().numel()} distinct rows of {rows.numel()}, the most frequent "
          f"{rows.bincount().max().item()} times")
    total = torch.zeros(n, 768, device="cuda")
    want = torch.zeros(n, 768, device="cuda", dtype=torch.float64).index_add_(0, rows.long(), values.double())
    us = timed(lambda: total.index_add_(0, rows, values))
    totals["index_add"] += us * (6 if name == "embed" else 1)
    print(f"  index_add_ {us:8.1f} us")
    for c in configs:
        total.zero_()
        T.add_rows_triton(total, rows, values, *c)
        err = ((total.double() - want).norm() / want.norm()).item()
        us = timed(lambda: T.add_rows_triton(total, rows, values, *c))
        totals[str(c)] += us * (6 if name == "embed" else 1)
        print(f"  {str(c):24s} {us:8.1f} us  rel err {err:.1e}")
print("a micro-step's seven tables (six at the embedding's rows, one at the bigram's), us:")
for k, v in sorted(totals.items(), key=lambda kv: kv[1]):
    print(f"  {k:24s} {v:8.1f}")
best = min(configs, key=lambda c: totals[str(c)])
print("best_add_rows_config:", *best)
