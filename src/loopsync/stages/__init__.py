"""The four stages of a cycle, one module each: `ingest`, `push`, `poll`, `act`.

Each stage is a set of functions over one `context.CycleContext` (the merchant's config,
store, clients, clock and the cycle's result); `loopsync.cycle.Engine` runs them in order
under the stage guard and the outage budget. This package imports nothing at import time,
so `loopsync.effects` can use `stages.context` without a cycle.
"""
