"""Who may do what: API keys, rate limits, client addresses, admission, admin access."""
