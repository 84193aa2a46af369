"""A search page: what a registered version finds, beside the zero-shot baseline.

    python -m protocol.search_app --port 8000 --version @champion

Serves http://127.0.0.1:<port>/ with a text box and an image drop. Both versions are the
registered pyfunc models, loaded and called as `mlflow models serve` would (see sides.py);
the page only filters and shows their rankings.
"""
