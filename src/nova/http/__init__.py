"""The REST edge: routes, wire schemas, auth, error mapping. No business rules here."""
