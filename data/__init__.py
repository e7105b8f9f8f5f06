"""Data tools: FineWeb download, local text tokenizer, and the token-shard format they share."""
