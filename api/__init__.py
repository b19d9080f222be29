"""Kami HTTP API: FastAPI routers, auth, schemas and error mapping over `engine`."""
