"""TRANSITIONAL: engine.py's old import path, removed with the facade; use loopsync.state."""
from loopsync.state import Store as Store  # noqa: PLC0414 - an explicit re-export
from loopsync.state.legacy import *  # noqa: F403 - the old constants engine.py reads
