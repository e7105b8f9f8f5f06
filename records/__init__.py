"""Tools for train_gpt.py logs and the records built from them: parse (logfile), recover the source (recover),
judge a record (summarize, stats), plot runs (plot), and regenerate the README's records table (table)."""
