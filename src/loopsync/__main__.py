# Signal handlers before the CLI's imports (a quarter of a second): a SIGTERM during
# start-up is then honoured (`serve` exits 0, `run` 143) instead of killing the process.
from loopsync.shutdown import PROCESS

PROCESS.install()

from loopsync.cli import main  # noqa: E402

raise SystemExit(main())
