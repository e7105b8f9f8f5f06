"""Download GPT-2-tokenized FineWeb shards (100M tokens each) from the Hugging Face hub.

    python data/cached_fineweb10B.py 9    # fineweb_val_000000.bin + fineweb_train_000001..000009.bin

Files already complete (header and size check out) are skipped without asking the hub; broken or truncated ones
are fetched again, and huggingface_hub resumes an interrupted download. Every shard is verified after download.
Before the first download one request without retries checks that the hub answers, so an offline machine fails in
seconds instead of after huggingface_hub's backoff; past that check huggingface_hub retries by itself. Set
HF_ENDPOINT to use a mirror. With HF_HUB_OFFLINE=1 nothing is downloaded: the shards must already be in --local_dir.
"""
import argparse
import sys
from pathlib import Path

if not __package__:  # run as `python data/cached_fineweb10B.py`: make the `data` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.shards import shard_problem


def shard_names(n_train: int) -> list[str]:
    return ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, n_train + 1)]


def failure(error: Exception, repo_id: str, filename: str) -> str:
    """The one line that a failed request for filename ends the script with."""
    from huggingface_hub.utils import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                       RevisionNotFoundError)

    # LocalEntryNotFoundError subclasses EntryNotFoundError but means "hub unreachable, nothing cached".
    missing = (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)
    if isinstance(error, missing) and not isinstance(error, LocalEntryNotFoundError):
        return f"error: {filename} is not in the Hugging Face dataset {repo_id}: {error}"
    reason = f"{type(error).__name__}: {error}"
    if error.__cause__ is not None and str(error.__cause__) != str(error):
        reason += f" ({error.__cause__})"
    return (f"error: cannot reach the Hugging Face hub to download {filename} from {repo_id}: {reason}. "
            f"Check your network, set HF_ENDPOINT to a reachable hub mirror, or copy the shards into --local_dir "
            f"(README: Offline use).")


def check_hub(repo_id: str, missing: list[str], local_dir: Path) -> None:
    """Raises SystemExit with one clear line, at once, when the hub is off (HF_HUB_OFFLINE) or does not answer a
    single metadata request for the first missing shard (no retries: network errors differ between
    huggingface_hub versions, requests vs httpx, so any error counts)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    if constants.HF_HUB_OFFLINE:
        raise SystemExit(f"error: HF_HUB_OFFLINE is set and {len(missing)} shard(s) are missing or incomplete in "
                         f"{local_dir}: {', '.join(missing)}. Copy them there (README: Offline use), or unset "
                         f"HF_HUB_OFFLINE to download them.")
    try:
        url = hf_hub_url(repo_id, missing[0], repo_type="dataset")
        get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as e:
        raise SystemExit(failure(e, repo_id, missing[0])) from e


def download(repo_id: str, filename: str, local_dir: Path) -> None:
    """hf_hub_download, which retries and resumes by itself; raises SystemExit with one clear line on failure."""
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(repo_id, filename, repo_type="dataset", local_dir=local_dir)
    except Exception as e:
        raise SystemExit(failure(e, repo_id, filename)) from e


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n_train", type=int, help="number of 100M-token train shards to fetch (9 for a record run)")
    parser.add_argument("--local_dir", type=Path, default=Path(__file__).resolve().parent / "fineweb10B")
    parser.add_argument("--repo_id", default="kjj0/fineweb10B-gpt2")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    args.local_dir.mkdir(parents=True, exist_ok=True)
    names = shard_names(args.n_train)
    problems = {name: problem for name in names if (problem := shard_problem(args.local_dir / name)) is not None}
    if problems:
        check_hub(args.repo_id, list(problems), args.local_dir)
    for name, problem in tqdm(problems.items(), desc=f"shards from {args.repo_id}", unit="file"):
        path = args.local_dir / name
        if path.exists():
            tqdm.write(f"{path}: {problem}; downloading it again", file=sys.stderr)
            path.unlink()  # the hub would otherwise trust its metadata and keep the broken file
        download(args.repo_id, name, args.local_dir)
        problem = shard_problem(path)
        if problem is not None:
            path.unlink(missing_ok=True)
            raise SystemExit(f"error: {name} downloaded from {args.repo_id} is not a valid token shard: {problem}")
    print(f"{len(names)} shards in {args.local_dir} ({len(problems)} downloaded, "
          f"{len(names) - len(problems)} already complete)")


if __name__ == "__main__":
    main()
