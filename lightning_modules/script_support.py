"""What every command-line script does the same way: one line per error, exit codes, signals.

Importing this module loads neither torch nor Lightning, so a script installs its handlers first.

- bad input (``ValueError``, ``TypeError``, ``OSError``, ``KeyError``: a missing file, a corrupt or
  mismatched checkpoint, a wrong shape) → ``<prog>: error: <one line>`` on stderr, exit status 2;
- a diverging sampler (``SamplerDivergedError``) → one line, exit status 1;
- SIGTERM (``scancel``, ``docker stop``) or SIGINT (Ctrl-C) → ``Interrupted`` is raised where the
  program is, so its clean-up runs (an output folder is discarded, training saves a checkpoint), then
  one line and exit status ``128 + signal``. A signal that arrives inside an import is delivered
  again every ``IMPORT_RETRY_S`` until the import is over: raised in the middle of one, it leaves
  half-initialised modules whose own errors (``KeyError``, ``RecursionError``, ``AttributeError``, seen
  with torch, matplotlib and sympy) hide it, or a library that guards an optional import with
  ``except Exception`` swallows it and the run goes on;
- ``--debug`` or ``DIFFPOST_DEBUG=1`` → the full traceback instead of the one line.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable

DEBUG_ENV = "DIFFPOST_DEBUG"
#: exceptions that mean "the input is wrong", reported in one line
INPUT_ERRORS = (ValueError, TypeError, OSError, KeyError)


#: how long a signal that arrived inside an import waits before it is delivered again
IMPORT_RETRY_S = 0.02


class Interrupted(BaseException):
    """Raised by the signal handlers: the run was asked to stop. A ``BaseException`` like
    ``KeyboardInterrupt``, so that no ``except Exception`` (ours or a library's) swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _inside_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _raise_interrupted(signum, frame) -> None:
    if _inside_import(frame):  # deliver it again shortly, until the import is over
        retry = threading.Timer(IMPORT_RETRY_S, os.kill, (os.getpid(), signum))
        retry.daemon = True
        retry.start()
        return
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT raise ``Interrupted`` (Lightning composes its own SIGTERM handler with ours)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_interrupted)


def quiet_lightning() -> None:
    """Only for the command line (tests calling a script's ``main`` keep their process's logging as it is):
    Lightning's info lines off, and its deprecation notice about torch's pytree API, which nobody running a
    script can act on. Sets levels by logger name, so it imports nothing."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def run_main(prog: str, body: Callable[[], object], *, debug: bool = False, interrupted_note: str = "") -> int:
    """Run ``body`` (which should do its heavy imports itself, so that a signal during them is handled
    too) and turn its failures into one line on stderr and an exit status."""
    try:
        body()
    except Interrupted as e:
        print(f"{prog}: {e}{interrupted_note}", file=sys.stderr)
        return 128 + e.signum
    except Exception as e:
        # imported here: importing this module stays cheap
        from diffpost.samplers.errors import SamplerDivergedError

        if debug or not isinstance(e, (SamplerDivergedError, *INPUT_ERRORS)):
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 1 if isinstance(e, SamplerDivergedError) else 2
    return 0
