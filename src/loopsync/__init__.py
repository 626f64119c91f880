"""loopsync: keeps Loop Returns and warehouse systems in step."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# The `loopsync` console script imports the CLI (a quarter of a second and more on a busy
# machine) before main() runs: its signal handlers go in first, as `python -m loopsync`
# does, or a SIGTERM during start-up kills `serve` with signal 15 instead of exit 0.
# os.path, not pathlib: pathlib costs ~27 ms to import, before the handlers exist.
if _os.path.basename(_sys.argv[0] if _sys.argv else "") == "loopsync":  # noqa: PTH119
    from loopsync.shutdown import PROCESS as _PROCESS

    _PROCESS.install()
