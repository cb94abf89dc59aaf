"""The web page and its JSON API (app), its static files, and a small load generator (load)."""
