"""The screen against its corpora: how many benign learnings it holds back, how many
injection attempts it lets through, which rule catches what, and what it costs per learning.

Reads tests/fixtures/learnings/benign.txt and injection.txt (one learning per line, ``# ``
comments, ``\\u{XXXX}`` for a character). docs/memory.md quotes its output.

    python -m bench.screen_corpus
    python -m bench.screen_corpus --show    # also list every miss and false alarm
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from pathlib import Path

from ralph.memory.screen import RULES, screen

CORPORA = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "learnings"
_ESCAPE = re.compile(r"\\u\{([0-9A-Fa-f]{1,6})\}")


def read_corpus(path: Path) -> list[str]:
    """The learnings of a corpus file, in order."""
    learnings = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("# "):
            learnings.append(_ESCAPE.sub(lambda match: chr(int(match[1], 16)), line))
    return learnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", action="store_true", help="list misses and false alarms")
    args = parser.parse_args(argv)
    benign = read_corpus(CORPORA / "benign.txt")
    injections = read_corpus(CORPORA / "injection.txt")

    started = time.perf_counter()
    benign_found = [screen(text) for text in benign]
    injection_found = [screen(text) for text in injections]
    seconds = time.perf_counter() - started

    false_alarms = [text for text, found in zip(benign, benign_found, strict=True) if found]
    misses = [text for text, found in zip(injections, injection_found, strict=True) if not found]
    print(
        f"benign learnings:    {len(benign):>4}, held back {len(false_alarms):>3} "
        f"(false positives {_percent(len(false_alarms), len(benign))})"
    )
    print(
        f"injection attempts:  {len(injections):>4}, let through {len(misses):>3} "
        f"(false negatives {_percent(len(misses), len(injections))})"
    )
    per_learning = seconds / (len(benign) + len(injections)) * 1000
    print(f"time per learning:   {per_learning:.2f} ms")
    hits = Counter(found.rule for found in injection_found if found)
    print("\nfirst rule to hold back each injection:")
    for rule in RULES:
        print(f"  {rule.name:<24} {hits.get(rule.name, 0):>4}")
    if args.show:
        for title, texts in (("false positives", false_alarms), ("false negatives", misses)):
            print(f"\n{title}:")
            for text in texts:
                print(f"  {text}")
    return 0


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


if __name__ == "__main__":
    raise SystemExit(main())
