"""`python -m bench` (bench/report.py): the benchmark report, its steps and what they share."""

import time


def say(msg: str) -> None:
    """One line of a bench run's progress, with the time."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)
