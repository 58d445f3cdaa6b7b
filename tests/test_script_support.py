"""Signals in command-line scripts (``lightning_modules.script_support``): deterministic, no torch.

A subprocess installs the handlers and sends itself SIGTERM in the middle of an import, the way a
``scancel`` lands while a script imports torch. Raised there, the signal used to be swallowed by a library
that guards an optional import with ``except Exception`` (the run went on and exited 0) or turned into
the half-imported module's own error; it must instead stop the run after the import, with exit 128 + 15.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MAIN = textwrap.dedent("""
    import sys
    sys.path[:0] = [{repo!r}, {pkgs!r}]
    from lightning_modules.script_support import install_signal_handlers, run_main
    install_signal_handlers()

    def body():
        try:  # how torch and others load optional dependencies
            import {module}
        except Exception as e:
            print("swallowed", type(e).__name__, file=sys.stderr)
        import pathlib, time
        time.sleep({work_s})  # the run's work, during which the deferred signal must land
        pathlib.Path({marker!r}).write_text("the run went on")

    sys.exit(run_main("probe.py", body, interrupted_note="; nothing was written"))
""")

# SIGTERM arrives while the module's body runs; the statements after it must still execute (no
# half-initialised module) and the run must stop once the import is done
SELF_SIGNAL = textwrap.dedent("""
    import os, signal, sys, time
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100):
        time.sleep(0.001)
    print("import complete", file=sys.stderr)
""")


def _probe(tmp_path: Path, module_body: str, module: str = "optional_dep", work_s: float = 2.0) -> subprocess.CompletedProcess:
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    (pkgs / f"{module}.py").write_text(module_body)
    marker = tmp_path / "marker.txt"
    code = MAIN.format(repo=str(REPO), pkgs=str(pkgs), module=module, marker=str(marker), work_s=work_s)
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_sigterm_inside_an_import_stops_the_run_once_the_import_is_done(tmp_path):
    proc = _probe(tmp_path, SELF_SIGNAL)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "swallowed" not in proc.stderr and "import complete" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "probe.py: interrupted by SIGTERM; nothing was written"
    assert not (tmp_path / "marker.txt").exists()


def test_sigterm_outside_imports_is_raised_at_once(tmp_path):
    """The handler defers only inside imports: a signal during plain work stops the run immediately,
    before the code after it runs (the marker), and no ``except Exception`` in the body catches it."""
    proc = _probe(tmp_path, "", work_s=0.0)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "marker.txt").read_text() == "the run went on"

    code = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from lightning_modules.script_support import install_signal_handlers, run_main
        install_signal_handlers()

        def body():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except Exception:
                print("swallowed", file=sys.stderr)
            print("went on", file=sys.stderr)

        sys.exit(run_main("probe.py", body))
    """)
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert proc.stderr.strip().splitlines() == ["probe.py: interrupted by SIGTERM"]
