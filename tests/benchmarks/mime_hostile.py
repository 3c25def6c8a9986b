"""Parse speed of hostile mail next to ordinary mail of the same size, in the same run.

For each hostile shape (the ones ``tests/unit/test_mime_hostile.py`` keeps linear), builds a
message of about ``--megabytes`` MB and one of a quarter of that, parses each (the best of
``--repeat`` runs, CPU time of this thread), and prints:

- MB/s, and the ratio to an ordinary message of the same size (a 2 KB text body repeated,
  plus a base64 attachment: what the sync parses all day);
- ``x4``: the time of the full size over the quarter size (linear: about 4; quadratic: 16).

Run: ``.venv/bin/python tests/benchmarks/mime_hostile.py [--megabytes 10] [--only nested]``
(about 35 s at 10 MB with ``--repeat 1`` on a 2-core machine). Before the linear-time work, a
10 MB subject of encoded-words alone took 32 s, a 80 KB ``To:`` of at-signs 34 s; measured on
2026-12-06 at 10 MB: every shape between 2 and 93 MB/s, ``x4`` between 3.9 and 4.4.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.mime import parse_message


def _message(headers: bytes, body: bytes = b"x\r\n") -> bytes:
    return b"From: a@x.test\r\nSubject: s\r\n" + headers + b"\r\n" + body


def _nested(depth: int, *, enclosed: bool) -> bytes:
    """Text ``depth`` levels down; built front and back in one join (not level by level,
    which would itself be quadratic)."""
    front: list[bytes] = []
    back: list[bytes] = []
    for level in reversed(range(depth)):
        if enclosed:
            front.append(b"Content-Type: message/rfc822\r\n\r\nSubject: m\r\n")
        else:
            b = f"b{level}".encode()
            front.append(
                b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\n--" + b + b"\r\n"
            )
            back.append(b"\r\n--" + b + b"--\r\n")
    leaf = b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    body = b"".join([*front, leaf, *reversed(back)])
    return b"From: a@x.test\r\nSubject: deep\r\n" + body


def ordinary(size: int) -> bytes:
    """A text body and a base64 attachment adding up to about ``size`` bytes."""
    text = (b"Hello there, this is an ordinary line of an ordinary message.\r\n" * 32) * max(
        1, size // 2 // 2048
    )
    attachment = base64.encodebytes(bytes(range(256)) * max(1, size // 2 // 340))
    return (
        b"From: Alice <alice@x.test>\r\nTo: bob@x.test\r\nSubject: ordinary\r\n"
        b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <o@x.test>\r\n"
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text + b"\r\n--B\r\n"
        b"Content-Type: application/octet-stream; name=a.bin\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"\r\n--B--\r\n"
    )


# shape -> message of about `size` bytes
SHAPES: dict[str, Callable[[int], bytes]] = {
    "encoded-word subject": lambda size: _message(
        b"Subject: " + b" ".join([b"=?utf-8?q?ab?="] * (size // 15)) + b"\r\n"
    ),
    "at-signs in To": lambda size: _message(b"To: " + b"a@" * (size // 2) + b"\r\n"),
    "spaces in To": lambda size: _message(b"To: a" + b" " * size + b"b\r\n"),
    "semicolons in Content-Type": lambda size: _message(
        b"Content-Type: text/plain; " + b"a;" * (size // 2) + b"x=y\r\n"
    ),
    "spaces in Content-Type": lambda size: _message(
        b"Content-Type: text/plain" + b" " * size + b"x\r\n"
    ),
    "comments in Date": lambda size: _message(b"Date: " + b"(a)" * (size // 3) + b"\r\n"),
    "Re: prefixes": lambda size: _message(b"Subject: " + b"Re: " * (size // 4) + b"x\r\n"),
    "unterminated HTML comment": lambda size: _message(
        b"Content-Type: text/html\r\n", b"<!--" + b"a" * size
    ),
    "nested multiparts": lambda size: _nested(size // 120, enclosed=False),
    "nested messages": lambda size: _nested(size // 45, enclosed=True),
}


def cpu_s(raw: bytes, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.thread_time()
        parse_message(raw)
        best = min(best, time.thread_time() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", help="run only the shapes whose name contains this")
    args = parser.parse_args()
    size = int(args.megabytes * 1024 * 1024)
    baseline = cpu_s(ordinary(size), args.repeat)
    rate = args.megabytes / baseline
    print(f"ordinary {args.megabytes:g} MB message: {baseline:.3f} s ({rate:.1f} MB/s)")
    print(f"{'shape':28} {'bytes':>10} {'cpu s':>8} {'MB/s':>8} {'vs ordinary':>12} {'x4':>6}")
    for name, make in SHAPES.items():
        if args.only and args.only not in name:
            continue
        raw = make(size)
        full = cpu_s(raw, args.repeat)
        quarter = cpu_s(make(size // 4), args.repeat)
        print(
            f"{name:28} {len(raw):>10,} {full:>8.3f} {len(raw) / 1e6 / full:>8.1f} "
            f"{full / baseline:>11.2f}x {full / max(quarter, 1e-6):>6.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
