"""``lopt-trace dashboard STORE``: explore a store in the browser (Panel, HoloViews, Bokeh)."""

from __future__ import annotations

import socket
import sys
import time

from lopt_trace.cli import bounded_int
from lopt_trace.errors import UserError

# Everything that loads JAX, xarray, zarr, Dask or HoloViews (the lopt_trace modules behind this
# command included) is imported inside the functions below, never here: `lopt-trace --help` and
# argument errors must answer without loading them (tests/test_cli_startup.py).


def add_parser(sub, name):
    p = sub.add_parser(
        name, help="serve an interactive dashboard of a store",
        description="Serve a Panel app with tabs Overview, State space, Update functions, Linear "
                    "dynamics and Gradients for STORE. Panels use the store's /analysis/* results "
                    "and offer to compute missing ones (see docs/dashboard.md). Stop with Ctrl-C.")
    p.add_argument("store", help="path or URL of a store written by `lopt-trace record`")
    p.add_argument("--port", type=bounded_int(0, 65535, "a port number in 0..65535"), default=5006,
                   help="port to serve on (default 5006; 0 picks a free one)")
    p.add_argument("--address", default="localhost",
                   help="address to listen on (default localhost; 0.0.0.0 serves every interface)")
    p.add_argument("--no-show", action="store_true", help="do not open a browser window")
    return p


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address if address not in ("localhost", "") else "127.0.0.1", 0))
        return s.getsockname()[1]


def _check_port(address: str, port: int) -> None:
    host = "127.0.0.1" if address in ("localhost", "") else address
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {address}:{port} ({exc.strerror}); choose another --port "
                            "(0 picks a free one)") from None


def run(args) -> int:
    from lopt_trace.zarr_io import exists

    if not exists(args.store):
        raise UserError(f"no store at {args.store}; record one with `lopt-trace record --task TASK`")
    started = time.perf_counter()
    from lopt_trace.dashboard import StoreView, build_app
    from lopt_trace.dashboard._common import pn

    view = StoreView(args.store)
    _ = view.tree  # open (and validate) now: a bad store is a one-line error, not a broken page
    panel = pn()
    port = args.port or _free_port(args.address)
    _check_port(args.address, port)
    host = "localhost" if args.address in ("localhost", "127.0.0.1", "") else args.address
    origins = [f"{h}:{port}" for h in {host, "localhost", "127.0.0.1", args.address}]
    if args.address == "0.0.0.0":
        origins = ["*"]
    url = f"http://{host if host != '0.0.0.0' else 'localhost'}:{port}/"
    print(f"lopt-trace dashboard: serving {args.store} at {url} (opened in "
          f"{time.perf_counter() - started:.1f} s; Ctrl-C to stop)", flush=True)
    panel.serve({"/": lambda: build_app(args.store, view)}, port=port, address=args.address,
                show=not args.no_show, threaded=False, title=f"lopt-trace · {view.task}",
                websocket_origin=origins, verbose=False, start=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from lopt_trace.cli import main

    sys.exit(main(["dashboard", *sys.argv[1:]]))
