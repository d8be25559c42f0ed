"""The HTTP API: one FastAPI app served by uvicorn locally and by the Functions host in Azure."""
