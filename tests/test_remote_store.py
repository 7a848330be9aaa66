"""Remote stores on a local S3-compatible server (moto's), started by the test.

``lopt-trace record`` writes to ``s3://bucket/x.zarr``, ``info`` describes it, ``analyze`` writes a
recipe's result into it, and plain ``xarray.open_datatree(..., storage_options=...)`` opens it; its
data equal a local recording of the same settings. The endpoint and credentials reach s3fs (and so
zarr and xarray) through the environment only (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``), as docs/store.md describes: lopt-trace passes no storage options of its
own.
"""

from __future__ import annotations

import socket
import warnings

import pytest
import xarray as xr

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from lopt_trace.cli import main  # noqa: E402

pytestmark = [pytest.mark.slow,  # about 35 s: a server, two recordings, a recipe
              pytest.mark.filterwarnings("ignore:Degrees of freedom:RuntimeWarning")]  # sem of 1 run

ARGS = ["--task", "linear_regression", "--optimizer", "sgd", "--optimizer", "adam",
        "--runs", "1", "--steps", "5", "--params", "4"]
BUCKET = "lopt-trace-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture()
def s3(s3_endpoint, monkeypatch):
    """The environment a user sets to point s3fs at an S3-compatible server, and a fresh bucket."""
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()  # an instance made before the env was set
    fs = s3fs.S3FileSystem()
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


def test_record_info_analyze_and_open_an_s3_store(s3, s3_endpoint, tmp_path, capsys):
    url = f"s3://{BUCKET}/x.zarr"
    local = str(tmp_path / "x.zarr")
    assert main(["record", *ARGS, "--out", url]) == 0
    assert main(["record", *ARGS, "--out", local]) == 0
    out = capsys.readouterr().out
    assert url in out
    assert s3.exists(f"{BUCKET}/x.zarr/zarr.json")
    assert not s3.exists(f"{BUCKET}/x.zarr.lock")  # the writer's lock is gone afterwards

    assert main(["info", url]) == 0
    info = capsys.readouterr().out
    assert f"store    {url}" in info and "sgd" in info and "adam" in info

    assert main(["analyze", "performance", url]) == 0
    assert "performance" in capsys.readouterr().out

    # plain xarray, with the storage options given explicitly instead of through the environment
    opts = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        remote = xr.open_datatree(url, engine="zarr", chunks={}, storage_options=opts)
    near = xr.open_datatree(local, engine="zarr", chunks={})
    assert remote.attrs["optimizers"] == ["sgd", "adam"]
    for name in ("sgd", "adam"):
        xr.testing.assert_identical(remote["runs"][name].to_dataset().load(),
                                    near["runs"][name].to_dataset().load())
    assert "performance" in remote["analysis"].children

    # lopt-trace's own reader, through the environment
    from lopt_trace import open_store

    tree = open_store(url)
    xr.testing.assert_identical(tree["runs/adam"].to_dataset().load(),
                                near["runs"]["adam"].to_dataset().load())
