"""The HTTP/1.1 server layer: the connection protocol (h11), requests, routing, limits and
flow control."""
