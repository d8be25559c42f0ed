"""The ``gigafactory`` command: the embedded runtime, client commands, and the factory side."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

DEFAULT_DATA_DIR = ".gigafactory"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7071
TERMINAL = {"succeeded", "failed", "cancelled"}

DEMO_MANIFEST = {
    "product": "demo",
    "title": "Hello from Gigafactory",
    "task": "hello from the demo job",
    "agent": {"profile": "echo"},
    "requirements": {"capabilities": ["local"]},
}


def _default_url() -> str:
    return os.environ.get("GIGAFACTORY_URL", f"http://{DEFAULT_HOST}:{DEFAULT_PORT}")


def _default_token() -> str | None:
    if os.environ.get("GIGAFACTORY_API_TOKEN"):
        return os.environ["GIGAFACTORY_API_TOKEN"]
    path = Path(os.environ.get("GIGAFACTORY_DATA_DIR", DEFAULT_DATA_DIR)) / "api-token"
    return path.read_text(encoding="utf-8").strip() if path.exists() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gigafactory", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    local = sub.add_parser("local", help="run the embedded coordinator with a local on-demand pool")
    local.add_argument("--host", default=DEFAULT_HOST)
    local.add_argument("--port", type=int, default=DEFAULT_PORT)
    local.add_argument("--data-dir", type=Path, default=Path(os.environ.get("GIGAFACTORY_DATA_DIR", DEFAULT_DATA_DIR)))
    local.add_argument("--pools", type=Path, default=os.environ.get("GIGAFACTORY_POOLS_FILE"),
                       help="pools JSON file (default: the packaged pools.json)")

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--url", default=_default_url())
        p.add_argument("--token", default=None, help="API token (default: $GIGAFACTORY_API_TOKEN or the local one)")
        return p

    submit = client("submit", "submit a manifest (JSON file, or - for stdin)")
    submit.add_argument("file")
    submit.add_argument("--idempotency-key")
    client("status", "show one job").add_argument("id")
    jobs = client("jobs", "list jobs")
    jobs.add_argument("--status")
    jobs.add_argument("--product")
    jobs.add_argument("--pool")
    jobs.add_argument("--limit", type=int, default=50)
    client("cancel", "cancel a job").add_argument("id")
    watch = client("watch", "follow a job until it finishes")
    watch.add_argument("id")
    watch.add_argument("--interval", type=float, default=1.0)

    factory = sub.add_parser("factory", help="factory side")
    fsub = factory.add_subparsers(dest="factory_command", required=True)
    fsub.add_parser("run", help="run one attempt (on-demand entry point; configured by environment)")
    serve = fsub.add_parser("serve", help="run a standing factory for one pool")
    serve.add_argument("--pool", required=True)
    serve.add_argument("--slots", type=int, default=1)
    serve.add_argument("--name", default=os.uname().nodename)
    serve.add_argument("--url", default=_default_url())
    serve.add_argument("--state-dir", type=Path, default=Path(".gigafactory-factory"),
                       help="where the factory keeps its credential (mode 0600)")
    serve.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    serve.add_argument("--receive-wait", type=float, default=30.0, help="broker long-poll seconds")
    return parser


def _client(args: argparse.Namespace) -> httpx.Client:
    token = args.token or _default_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=30)


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def _check(response: httpx.Response) -> Any:
    try:
        data = response.json()
    except ValueError:
        data = {"message": response.text}
    if response.status_code >= 400:
        print(f"error {response.status_code}: {data.get('message', data)}", file=sys.stderr)
        for err in data.get("errors", []) or []:
            print(f"  {err.get('field')}: {err.get('message')}", file=sys.stderr)
        raise SystemExit(1)
    return data


def cmd_local(args: argparse.Namespace) -> int:
    from gigafactory import logs
    from gigafactory.domain.pools import load_pools
    from gigafactory.local.runtime import Runtime, RuntimeConfig

    logs.configure(os.environ.get("GIGAFACTORY_LOG_LEVEL", "INFO"))
    cfg = RuntimeConfig(
        data_dir=args.data_dir, pools=load_pools(args.pools), host=args.host, port=args.port,
        dispatch_mode=os.environ.get("GIGAFACTORY_DISPATCH_MODE", "broker"),
        sweep_seconds=float(os.environ.get("GIGAFACTORY_SWEEP_SECONDS", "60")),
        kill_grace_seconds=float(os.environ.get("GIGAFACTORY_KILL_GRACE_SECONDS", "10")),
    )
    runtime = Runtime(cfg)
    base = f"http://{args.host}:{args.port}"

    def ready() -> None:
        demo = json.dumps(DEMO_MANIFEST)
        print(
            f"\nGigafactory {cfg.dispatch_mode} coordinator running at {base}/api  (data: {cfg.data_dir})\n"
            f"API token: {runtime.api_token}\n"
            f"OpenAPI:   {base}/api/openapi.json\n\n"
            "Submit a demo job:\n"
            f"  curl -sS -X POST {base}/api/jobs -H 'Authorization: Bearer {runtime.api_token}'"
            f" -H 'Content-Type: application/json' -d '{demo}'\n"
            "Then follow it:\n"
            f"  curl -sS {base}/api/jobs/<id> -H 'Authorization: Bearer {runtime.api_token}'\n",
            flush=True,
        )

    runtime.serve(on_ready=ready)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    headers = {"Content-Type": "application/json"}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    with _client(args) as http:
        _print(_check(http.post("/api/jobs", content=text.encode(), headers=headers)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as http:
        _print(_check(http.get(f"/api/jobs/{args.id}")))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    params = {k: v for k, v in {"status": args.status, "product": args.product, "pool": args.pool,
                                "limit": args.limit}.items() if v is not None}
    with _client(args) as http:
        data = _check(http.get("/api/jobs", params=params))
    for item in data["items"]:
        print(f"{item['id']}  {item['status']:<15} attempt {item['attempt']}  {item['pool']:<10} "
              f"{item['product']:<12} {item.get('title') or ''}")
    if data.get("continuation"):
        print(f"(more: continuation {data['continuation']})")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as http:
        _print(_check(http.post(f"/api/jobs/{args.id}/cancel")))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    last = None
    with _client(args) as http:
        while True:
            job = _check(http.get(f"/api/jobs/{args.id}"))
            state = (job["status"], job["attempt"])
            if state != last:
                print(f"{time.strftime('%H:%M:%S')}  {job['status']}  attempt {job['attempt']}", flush=True)
                last = state
            if job["status"] in TERMINAL:
                _print(job.get("result"))
                return 0 if job["status"] == "succeeded" else 1
            time.sleep(args.interval)


def cmd_factory(args: argparse.Namespace) -> int:
    from gigafactory import logs
    from gigafactory.factory.runner import RunConfig, run

    logs.configure(os.environ.get("GIGAFACTORY_LOG_LEVEL", "INFO"))
    if args.factory_command == "run":
        return run(RunConfig.from_env())
    from gigafactory.factory.serve import ServeConfig, serve

    return serve(ServeConfig(
        url=args.url, pool=args.pool, slots=args.slots, name=args.name, state_dir=args.state_dir,
        workdir=args.workdir, enrollment_secret=os.environ.get("GIGAFACTORY_ENROLLMENT_SECRET"),
        kill_grace_seconds=float(os.environ.get("GIGAFACTORY_KILL_GRACE_SECONDS", "10")),
        receive_wait_seconds=args.receive_wait,
    ))


COMMANDS = {"local": cmd_local, "submit": cmd_submit, "status": cmd_status, "jobs": cmd_jobs,
            "cancel": cmd_cancel, "watch": cmd_watch, "factory": cmd_factory}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except httpx.TransportError as exc:
        print(f"error: cannot reach the coordinator at {getattr(args, 'url', '?')}: {exc}", file=sys.stderr)
        return 1
