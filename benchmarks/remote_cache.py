"""Remote-cache benchmark: a clean clone of the example built from a shared cache, against a cold build.

Clones the repository twice (`git clone --local`, so both see the committed deploy.yaml.example and
examples/, with nothing built), points both at one remote cache, and times:

1. a cold build of clone A (every step runs; each result is pushed to the remote as it lands);
2. the same build in clone B, which should run zero steps (every node pulled and verified);
3. a no-op build in clone B afterwards (answered locally: no request reaches the remote).

The remote is a real S3 API (moto's server on loopback, the default) or a directory (--remote file).

    python benchmarks/remote_cache.py                 # moto S3 on loopback
    python benchmarks/remote_cache.py --remote file -j 2

Results go to benchmarks/results/remote_cache.json and are quoted in docs/remote-cache.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIG = "deploy.yaml.example"


def build(root: Path, env: dict[str, str], jobs: int) -> dict:
    """Run `modelbuild build` in `root`; its wall time and what each node did."""
    started = time.perf_counter()
    # Run from this checkout (cwd=REPO) so its buildsys is the one imported, not the clone's copy.
    proc = subprocess.run([sys.executable, "-m", "buildsys", "-f", str(root / CONFIG), "build", "-k", "-j", str(jobs)],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    outcomes: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^\s+(built|cached|restored|cutoff|failed|skipped)\s+\S+", line)
        if m:
            outcomes[m.group(1)] = outcomes.get(m.group(1), 0) + 1
    return {"seconds": round(seconds, 2), "exit_code": proc.returncode, "outcomes": outcomes,
            "from_remote": proc.stdout.count("from remote"), "nothing_to_do": "Nothing to do" in proc.stdout,
            "stderr_tail": proc.stderr.strip().splitlines()[-3:]}


def start_moto(env: dict[str, str]) -> tuple[object, str]:
    """A moto S3 server on a free loopback port with one bucket; returns it and the remote URL."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="modelbuild")
    return server, "s3://modelbuild/example"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remote", choices=["moto", "file"], default="moto")
    parser.add_argument("-j", "--jobs", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="Work directory (default: a temporary one).")
    parser.add_argument("--keep", action="store_true", help="Keep the clones and the remote.")
    args = parser.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="mb-remote-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    for name in ("MODELBUILD_CACHE", "MODELBUILD_REMOTE_READONLY"):
        env.pop(name, None)
    server = None
    if args.remote == "moto":
        server, url = start_moto(env)
    else:
        url = (work / "remote").as_uri()
    env["MODELBUILD_REMOTE"] = url
    try:
        clones = []
        for name in ("a", "b"):
            subprocess.run(["git", "clone", "--quiet", "--local", str(REPO), str(work / name)], check=True)
            clones.append(work / name)
        print(f"remote {url}; clones in {work}", flush=True)
        cold = build(clones[0], env, args.jobs)
        print(f"cold build (A, pushing): {cold['seconds']:.1f} s {cold['outcomes']}", flush=True)
        warm = build(clones[1], env, args.jobs)
        print(f"clean clone B from the remote: {warm['seconds']:.1f} s {warm['outcomes']}, "
              f"{warm['from_remote']} from remote", flush=True)
        if server is not None:
            server.stop()  # B's no-op must not need it
            server = None
        noop = build(clones[1], env, args.jobs)
        print(f"no-op in B with the remote server stopped: {noop['seconds']:.2f} s", flush=True)
        result = {
            "remote": args.remote, "jobs": args.jobs, "host": platform.node(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "cold_build": cold, "clean_clone_from_remote": warm, "noop_without_remote_server": noop,
            "speedup": round(cold["seconds"] / warm["seconds"], 1) if warm["seconds"] else None,
            "steps_run_in_clone": warm["outcomes"].get("built", 0),
        }
        out = HERE / "results" / "remote_cache.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out.relative_to(REPO)}: {result['speedup']}× faster, "
              f"{result['steps_run_in_clone']} step(s) run in the clone")
    finally:
        if server is not None:
            server.stop()
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
