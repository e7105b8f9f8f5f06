"""Download GPT-2-tokenized FineWeb shards (100M tokens each) from the Hugging Face hub.

    python data/cached_fineweb10B.py 9    # fineweb_val_000000.bin + fineweb_train_000001..000009.bin

Files already complete (header and size check out) are skipped without asking the hub; broken or truncated ones
are fetched again. Every shard is verified after download. Set HF_ENDPOINT to use a mirror.
"""
import argparse
import sys
import time
from pathlib import Path

if not __package__:  # run as `python data/cached_fineweb10B.py`: make the `data` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.shards import shard_problem


def shard_names(n_train: int) -> list[str]:
    return ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, n_train + 1)]


def download(repo_id: str, filename: str, local_dir: Path, retries: int) -> None:
    """hf_hub_download with our own retries on top of the hub's; raises SystemExit with one clear line on failure."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                       RevisionNotFoundError)

    for attempt in range(retries + 1):
        try:
            hf_hub_download(repo_id, filename, repo_type="dataset", local_dir=local_dir)
            return
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
            # LocalEntryNotFoundError subclasses EntryNotFoundError but means "hub unreachable, nothing cached".
            if not isinstance(e, LocalEntryNotFoundError):
                raise SystemExit(f"error: {filename} is not in the Hugging Face dataset {repo_id}: {e}") from e
            error = e
        except Exception as e:  # network errors differ between huggingface_hub versions (requests vs httpx)
            error = e
        if attempt < retries:
            wait = min(2.0 ** attempt, 60.0)
            print(f"download of {filename} failed ({error}); retry {attempt + 1}/{retries} in {wait:.0f}s",
                  file=sys.stderr)
            time.sleep(wait)
    reason = f"{type(error).__name__}: {error}"
    if error.__cause__ is not None:
        reason += f" ({error.__cause__})"
    raise SystemExit(f"error: cannot reach the Hugging Face hub to download {filename} from {repo_id}: {reason}. "
                     f"Check your network, or set HF_ENDPOINT to a reachable hub mirror.")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n_train", type=int, help="number of 100M-token train shards to fetch (9 for a record run)")
    parser.add_argument("--local_dir", type=Path, default=Path(__file__).resolve().parent / "fineweb10B")
    parser.add_argument("--repo_id", default="kjj0/fineweb10B-gpt2")
    parser.add_argument("--retries", type=int, default=5, help="extra attempts per file, with exponential backoff")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    args.local_dir.mkdir(parents=True, exist_ok=True)
    names = shard_names(args.n_train)
    skipped = 0
    for name in tqdm(names, desc=f"shards from {args.repo_id}", unit="file"):
        path = args.local_dir / name
        problem = shard_problem(path)
        if problem is None:
            skipped += 1
            continue
        if path.exists():
            tqdm.write(f"{path}: {problem}; downloading it again", file=sys.stderr)
            path.unlink()  # the hub would otherwise trust its metadata and keep the broken file
        download(args.repo_id, name, args.local_dir, args.retries)
        problem = shard_problem(path)
        if problem is not None:
            path.unlink(missing_ok=True)
            raise SystemExit(f"error: {name} downloaded from {args.repo_id} is not a valid token shard: {problem}")
    print(f"{len(names)} shards in {args.local_dir} ({len(names) - skipped} downloaded, {skipped} already complete)")


if __name__ == "__main__":
    main()
