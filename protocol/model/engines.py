"""The feature-extraction engines by name; torch-free, so that stage configs can offer them."""

ENGINES = ("local", "ray")  # extract_local.py (DataLoader workers), extract_ray.py (Ray Data actors)
