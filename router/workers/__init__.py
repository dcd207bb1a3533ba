"""Several worker processes on one host sharing the data port (`workers: N`), under one supervisor."""
