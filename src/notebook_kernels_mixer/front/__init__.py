"""What faces the client: the Host check (DNS rebinding), the token and XSRF checks,
the websocket Origin check, error answers and (redacted) request logging. All of it
runs as aiohttp middlewares before any backend is contacted."""
