"""Marqo's public fashion leaderboard protocol (marqo-ai/marqo-FashionCLIP) on this project's models.

specs (the tasks YAML) -> loading (hub or local folder, the cache's view, fingerprint) -> tasks
(queries and relevance) -> scoring (documents, top-k, leaderboard figures) -> runner (one dataset
through the feature cache) -> published + report (benchmark.json / .md). No MLflow here:
protocol/tracking/stages/benchmark.py logs it.
"""
