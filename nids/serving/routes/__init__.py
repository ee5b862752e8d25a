"""FastAPI routers mounted on the Bento beside its POST APIs (each module one area: lifecycle, observability)."""
