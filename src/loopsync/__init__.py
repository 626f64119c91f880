"""loopsync: keeps Loop Returns and warehouse systems in step."""

__version__ = "0.1.0"
