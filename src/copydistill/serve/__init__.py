"""``copydistill serve``: a matching service over one index (FastAPI + uvicorn) and its page."""
