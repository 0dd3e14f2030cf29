"""bnaas service: the HTTP face (FastAPI) over the bncore engine."""

__version__ = "0.1.0"
