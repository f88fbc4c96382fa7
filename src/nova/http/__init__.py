"""The REST edge: routes, schemas, error mapping, and the ASGI edge middlewares."""
