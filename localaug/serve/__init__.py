"""The HTTP server: one scheduler thread per model, the FastAPI app, what its routes do, request
schemas and metrics. It talks to models through ``scheduler.ServedModel`` only."""
