"""HTTP routers: each translates HTTP to `engine` calls and back, and nothing more."""
