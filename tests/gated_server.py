"""The real server (``predictor.serving.server.main``) with a gate in front of every model call, for tests
that must hold the model still: ``python tests/gated_server.py <predictor flags>``.

The test drives the gate through the process's stdin, one command a line:

- ``hold``: later model calls wait at the gate (a call already running finishes);
- ``release``: the gate opens and every waiting call goes on;
- ``slow <seconds>``: the gate opens and every later model call first sleeps that long (a slower model,
  for sustained overload; the warm-up's timings, taken before, are the fast model's).

After each command, and whenever a call arrives at or leaves the gate, the launcher rewrites the file
named by ``GATE_STATE_FILE`` with ``"<hold|open|slow> <calls waiting>"``, so a test knows a command has taken
effect and how many model calls are blocked, without timing anything. The gate is open at start, so
the warm-up runs through it, unless ``GATE_START=hold``: then the warm-up (which runs every batch
bucket through the model) waits at the gate and the server stays not ready until ``release``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from predictor.serving.server import main
from predictor.ssd.detector import Detector


class Gate:
    """An open/held gate with a count of the callers waiting at it, mirrored into a state file."""

    def __init__(self, state_file: Path, held: bool = False) -> None:
        self._open = threading.Event()
        if not held:
            self._open.set()
        self._lock = threading.Lock()
        self._waiting = 0
        self._delay = 0.0  # seconds each model call sleeps while the gate is open
        self._state_file = state_file
        self._publish()

    def _publish(self) -> None:
        with self._lock:
            word = "hold" if not self._open.is_set() else "slow" if self._delay else "open"
            text = f"{word} {self._waiting}"
            tmp = self._state_file.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self._state_file)  # atomic: a reader never sees half a line

    def command(self, line: str) -> None:
        if line == "hold":
            self._open.clear()
        elif line == "release":
            self._delay = 0.0
            self._open.set()
        elif line.startswith("slow "):
            self._delay = float(line.split()[1])
            self._open.set()
        else:
            print(f"gated_server: unknown gate command {line!r}", file=sys.stderr, flush=True)
        self._publish()

    def pass_through(self) -> None:
        """Block the calling (model) thread while the gate is held."""
        if self._open.is_set():
            if self._delay:
                time.sleep(self._delay)
            return
        with self._lock:
            self._waiting += 1
        self._publish()
        self._open.wait()
        with self._lock:
            self._waiting -= 1
        self._publish()


def _install(gate: Gate) -> None:
    run_batch = Detector.run_batch

    def gated_run_batch(self: Detector, *args, **kwargs):
        gate.pass_through()
        return run_batch(self, *args, **kwargs)

    Detector.run_batch = gated_run_batch


def _read_commands(gate: Gate) -> None:
    for line in sys.stdin:
        gate.command(line.strip())


if __name__ == "__main__":
    gate = Gate(Path(os.environ["GATE_STATE_FILE"]), held=os.environ.get("GATE_START") == "hold")
    _install(gate)
    threading.Thread(target=_read_commands, args=(gate,), name="gate-control", daemon=True).start()
    sys.exit(main(sys.argv[1:]))
