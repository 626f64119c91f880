"""TRANSITIONAL: engine.py's old import path, removed with the facade; use loopsync.state."""
from loopsync.state import MerchantLock, Store, lock_is_held, state_error  # noqa: F401
from loopsync.state.legacy import *  # noqa: F403
