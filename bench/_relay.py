"""The benches' SMTP relay: aiosmtpd in a process of its own, printing what it accepts.

For every mail it accepts it prints one JSON line to stdout, flushed at once:
`{"t": <time.time() when it answered 250>, "from": ..., "rcpt": [...], "size": N,
"message_id": ...}` (the mail's Message-ID without angle brackets, "" if none), so
that the bench can count every acknowledgement once and tell a duplicate apart.
The first line is `{"ready": PORT}`. It runs until stdin closes or SIGTERM.

    python -m bench._relay --port 2525
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from typing import Any

from aiosmtpd.controller import Controller

_MESSAGE_ID = re.compile(rb"(?im)^message-id:\s*<?([^>\s]+)")  # folded or not


class Stamping:
    """Accepts every mail and reports it with the time it was accepted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content or b""
        head = content.split(b"\r\n\r\n", 1)[0]
        found = _MESSAGE_ID.search(head)
        line = json.dumps({"t": time.time(), "from": envelope.mail_from,
                           "rcpt": [r.lower() for r in envelope.rcpt_tos],
                           "size": len(content),
                           "message_id": found.group(1).decode(errors="replace").strip()
                           if found else ""})
        with self.lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        return "250 2.0.0 accepted"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    controller = Controller(Stamping(), hostname="127.0.0.1", port=args.port,
                            data_size_limit=0)
    controller.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(json.dumps({"ready": args.port}), flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
