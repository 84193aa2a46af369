"""`python -m protocol.search_app`: load both versions, then serve the page on 127.0.0.1."""

from __future__ import annotations

import argparse
import logging
import sys
from urllib.parse import urlsplit

from protocol.search_app.app import DEFAULT_MAX_IMAGE_BYTES, create_app
from protocol.search_app.sides import load_side

HOST = "127.0.0.1"  # the page has no authentication: loopback only (ssh -L to look from elsewhere)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m protocol.search_app", description=__doc__, allow_abbrev=False)
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000)")
    p.add_argument("--version", default="@champion",
                   help="the registered version to look at: @alias or a number (default @champion)")
    p.add_argument("--baseline", default="@baseline", help="the zero-shot version beside it (default @baseline)")
    p.add_argument("--mlflow-ui", default="http://127.0.0.1:5000",
                   help="the MLflow UI that model links open (default http://127.0.0.1:5000, as `make ui`)")
    p.add_argument("--max-image-mb", type=float, default=DEFAULT_MAX_IMAGE_BYTES / 2**20,
                   help="largest image upload accepted, in MiB (default %(default)g)")
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        p.error(f"--port {args.port}: give a port from 1 to 65535")
    ui = urlsplit(args.mlflow_ui)
    if ui.scheme not in ("http", "https") or not ui.netloc:
        p.error(f"--mlflow-ui {args.mlflow_ui!r}: give the UI's http(s) address, e.g. http://127.0.0.1:5000")
    if not args.max_image_mb > 0:
        p.error(f"--max-image-mb {args.max_image_mb}: give a positive size")
    return args


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from protocol.tracking.runs import configure

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure()
    photos: dict = {}
    try:
        sides = [load_side("baseline", args.baseline, args.mlflow_ui, photos, title="zero-shot"),
                 load_side("champion", args.version, args.mlflow_ui, photos)]
    except (LookupError, ValueError, OSError) as e:
        print(f"search_app: error: {e}", file=sys.stderr)
        return 1
    app = create_app(sides, max_image_bytes=int(args.max_image_mb * 2**20))
    print(f"search page: http://{HOST}:{args.port}/", flush=True)
    uvicorn.run(app, host=HOST, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
