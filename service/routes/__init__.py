"""One APIRouter per file; app.py includes them all."""
