"""The handlers: chat with its relay, the public routes, the admin routes, the web UI."""
