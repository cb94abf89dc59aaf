"""The web app (`mnist-cnn serve`): app.py is the server, static/ the page, load.py a bounded load test."""
