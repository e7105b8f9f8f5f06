"""Where the GPU waits in a --bench_trace chrome trace: idle gaps between kernels, the largest with the kernel
after them and the host ops that launched it, and the NorMuon and Adam step ranges' kernel time against their span.
Usage: python trace_gaps.py trace.json [top]"""
import bisect
import collections
import json
import sys

events = json.load(open(sys.argv[1]))["traceEvents"]
top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
launches = {e["args"].get("correlation"): e for e in events if e.get("cat") == "cuda_runtime"}
cpu_ops = sorted((e for e in events if e.get("cat") in ("cpu_op", "user_annotation", "python_function")
                  and e.get("dur")), key=lambda e: e["ts"])
starts = [e["ts"] for e in cpu_ops]


def host_context(ts, tid):
    """Names of the host ops open at ts on thread tid, outermost first (the last 3)."""
    i = bisect.bisect_right(starts, ts)
    open_ops = [e for e in cpu_ops[max(0, i - 4000):i] if e["tid"] == tid and e["ts"] + e["dur"] >= ts]
    return " > ".join(e["name"][:50] for e in open_ops[-3:])


span = kernels[-1]["ts"] + kernels[-1]["dur"] - kernels[0]["ts"]
busy_until, gaps = kernels[0]["ts"], []
for k in kernels:
    if k["ts"] > busy_until:
        gaps.append((k["ts"] - busy_until, k))
    busy_until = max(busy_until, k["ts"] + k["dur"])
total_gap = sum(g for g, _ in gaps)
print(f"kernels:{len(kernels)} span_ms:{span / 1000:.1f} idle_ms:{total_gap / 1000:.2f} gaps:{len(gaps)} "
      f"over_20us:{sum(g > 20 for g, _ in gaps)} idle_in_them_ms:{sum(g for g, _ in gaps if g > 20) / 1000:.2f}")
by_host = collections.Counter()
for g, k in gaps:
    launch = launches.get(k["args"].get("correlation"))
    ctx = host_context(launch["ts"], launch["tid"]) if launch else "?"
    by_host[ctx.split(" > ")[0] if ctx else "?"] += g
print("idle by outermost host op open at the launch (ms):")
for name, g in by_host.most_common(12):
    print(f"  {g / 1000:8.2f}  {name}")
print(f"largest {top} gaps:")
for g, k in sorted(gaps, key=lambda x: -x[0])[:top]:
    launch = launches.get(k["args"].get("correlation"))
    print(f"  {g:8.0f}us before {k['name'][:60]}  | {host_context(launch['ts'], launch['tid']) if launch else '?'}")
for label in ("NorMuon.step", "DistAdam.step"):
    ranges = [e for e in events if e.get("cat") == "gpu_user_annotation" and label in e.get("name", "")]
    for r in ranges:
        inside = [k for k in kernels if r["ts"] <= k["ts"] < r["ts"] + r["dur"]]
        names = collections.Counter()
        for k in inside:
            names[k["name"][:70]] += k["dur"]
        print(f"{label}: span_ms:{r['dur'] / 1000:.2f} kernel_ms:{sum(k['dur'] for k in inside) / 1000:.2f} "
              f"kernels:{len(inside)}")
        for name, d in names.most_common(12):
            print(f"    {d / 1000:7.2f}  {name}")
