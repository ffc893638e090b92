"""The `gen3-workspace` command: run the embedded workspace (`up`) and check flavor catalogues (`flavors`)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .local import LocalSettings, engine_running, find_engine_command, persistent_secret

HUB_CONFIG = """\
# Written by `gen3-workspace up`; edit the command's options instead.
from gen3workspace.hub.local import LocalSettings, configure
configure(c, LocalSettings.load({settings!r}))
{extra}"""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (callers retry if someone takes it first)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(ip: str, port: int) -> bool:
    """Whether a server could listen on the port now.

    SO_REUSEADDR as nginx and tornado set it: connections of a stopped server still closing
    (TIME_WAIT, FIN_WAIT) hold no listener, and a restart on the same port must not be refused.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return ip == "localhost"


def _frame_ancestor(value: str) -> str:
    """argparse type of --frame-ancestor: one CSP source, checked like the hub and the chart check it."""
    from gen3workspace.spawner.grammar import GrammarError, check_csp_sources

    try:
        return check_csp_sources([value], "--frame-ancestor")[0]
    except GrammarError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--frame-ancestor: ")) from None


def _commons_url(value: str) -> str:
    from gen3workspace.spawner.grammar import GrammarError, check_url_base

    try:
        return check_url_base(value.rstrip("/"), "--commons-url")
    except GrammarError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--commons-url: ")) from None


def _own_group_dying_with_parent() -> None:
    """In the hub's child before exec: a process group of its own, and SIGTERM if we die."""
    os.setpgid(0, 0)
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: only a killed `up` (not Ctrl-C) could leave the hub running


def banner(settings: LocalSettings, data: Path) -> str:
    """What the operator is told once the hub answers: where to go, how login works, what to register."""
    lines = [f"Gen3 Workspace is running: open {settings.public_url}"]
    if settings.fence_login:
        lines.append(f"  login: Fence login via {settings.commons_url}")
        lines.append(f"  Fence client {settings.client_id} must have this redirect URL registered: {settings.oauth_callback_url}")
    else:
        lines.append("  login: DEV LOGIN (any username, localhost only); no commons is connected (--commons-url and --client-id connect one)")
    if settings.base_url != "/" and settings.launcher_prefix == settings.base_url:
        lines.append(f"  portal launcher API: {settings.public_url}options, status, launch, proxy/")
    lines += [f"  data:  {data}", "  stop:  Ctrl-C"]
    return "\n" + "\n".join(lines) + "\n"


def _cmd_up(args: argparse.Namespace) -> int:
    data = Path(args.data_dir).absolute()
    data.mkdir(parents=True, exist_ok=True)
    fence = bool(args.commons_url and args.client_id)
    if (args.commons_url or args.client_id) and not fence:
        print("error: Fence login needs both --commons-url and --client-id (and GEN3_CLIENT_SECRET in the environment).", file=sys.stderr)
        return 2
    if fence and not os.environ.get("GEN3_CLIENT_SECRET"):
        print("error: set GEN3_CLIENT_SECRET in the environment for the Fence client.", file=sys.stderr)
        return 2
    if not is_loopback(args.ip):
        # Every user's server runs as this machine's user and could read the others' keys and
        # the hub's secrets: the embedded mode is for one person. Share with the Helm chart.
        print(
            f"error: the embedded mode only listens on 127.0.0.1 (refusing --ip {args.ip}): every user's server "
            "runs as this machine's user, so it is for one person on this machine. Use the Helm chart to share a workspace.",
            file=sys.stderr,
        )
        return 2
    if not port_free(args.ip, args.port) and not engine_running(data):
        print(f"error: port {args.port} on {args.ip} is in use; pick another with --port.", file=sys.stderr)
        return 2
    if args.flavors:
        # The catalogue's schema validator takes a while to import; only a given file needs it.
        from gen3workspace.spawner.flavors import CatalogueError, load_catalogue

        try:
            load_catalogue(args.flavors)
        except CatalogueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    engine = find_engine_command()
    if not engine:
        print("error: nginx (the proxy engine) not found; run the set-up (make setup) first.", file=sys.stderr)
        return 2
    base_url = "/" + args.base_url.strip("/") + "/" if args.base_url.strip("/") else "/"
    dev_groups: dict[str, list[str]] = {}
    for item in args.dev_group:
        user, _, group = item.partition("=")
        dev_groups.setdefault(user, []).append(group)
    settings = LocalSettings(
        data_dir=str(data),
        ip=args.ip,
        port=args.port,
        hub_port=free_port(),
        base_url=base_url,
        commons_url=(args.commons_url or "").rstrip("/"),
        commons_name=args.commons_name,
        client_id=args.client_id or "",
        flavor_file=str(Path(args.flavors).absolute()) if args.flavors else "",
        frame_ancestors=args.frame_ancestor,
        portal_url=args.portal_url or "",
        egress_proxy=args.egress_proxy or "",
        no_proxy=args.no_proxy,
        issue_api_key=not args.no_api_key,
        dev_groups=dev_groups,
        engine_command=engine,
        launcher_prefix=args.launcher_prefix,
        commons_logo=args.commons_logo,
        debug=args.debug,
    )
    settings_path = data / "settings.json"
    settings.save(settings_path)
    config_path = data / "jupyterhub_config.py"
    extra = f"load_subconfig({str(Path(args.extra_config).absolute())!r})\n" if args.extra_config else ""
    config_path.write_text(HUB_CONFIG.format(settings=str(settings_path), extra=extra))

    env = dict(os.environ)
    env["JUPYTERHUB_CRYPT_KEY"] = persistent_secret(data / "crypt_key")
    env["GEN3WS_DATA_DIR"] = str(data)
    url = settings.public_url
    hub: subprocess.Popen[bytes] | None = None
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        # JupyterHub stops the proxy and every user server when it gets SIGINT/SIGTERM.
        nonlocal stopping
        if hub is not None and hub.poll() is not None:
            return
        if stopping:
            print("Still stopping the users' servers and the proxy; this takes a few seconds.", file=sys.stderr, flush=True)
            return
        stopping = True
        print("\nStopping Gen3 Workspace (users' servers, proxy, hub)...", file=sys.stderr, flush=True)
        if hub is not None:
            hub.send_signal(signal.SIGTERM)

    # Before the hub starts, so a Ctrl-C while it starts is a stop, not a traceback.
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    # The hub runs in a process group of its own, so a terminal's Ctrl-C (sent to the whole
    # foreground group) reaches it once, through forward(), not twice: a second signal starts
    # a second shutdown that races the first (a second SIGINT to each user's server, "Failed
    # to stop user", tasks destroyed while pending). It dies with this process if we are killed.
    hub = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "--config", str(config_path)],
        cwd=str(data),
        env=env,
        preexec_fn=_own_group_dying_with_parent,
    )
    if stopping:
        hub.send_signal(signal.SIGTERM)
    announced = False
    while hub.poll() is None:
        if not announced and not stopping:
            try:
                with urllib.request.urlopen(f"{url}hub/health", timeout=2) as r:
                    announced = r.status == 200
            except (urllib.error.URLError, OSError):
                pass
            if announced:
                print(banner(settings, data), flush=True)
                continue
        time.sleep(0.5)
    if stopping:
        print("Gen3 Workspace stopped.", file=sys.stderr, flush=True)
    return hub.returncode if hub.returncode >= 0 else 0


def _cmd_flavors(args: argparse.Namespace) -> int:
    from gen3workspace.spawner.flavors import CatalogueError, group_warnings, load_catalogue, schema_json

    if args.action == "schema":
        sys.stdout.write(schema_json())
        return 0
    if not args.file:
        print("error: give the catalogue file", file=sys.stderr)
        return 2
    try:
        catalogue = load_catalogue(args.file)
    except CatalogueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.action == "validate":
        # Valid, but a flavor Fence login would offer to nobody: said, not refused.
        for warning in group_warnings(catalogue, args.known_group):
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{args.file}: OK, {len(catalogue.flavors)} flavors, default {catalogue.default}")
        return 0
    rows = [f.summary() for f in catalogue.flavors]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'NAME':<18} {'CPU':<8} {'MEMORY':<10} {'GPU':<4} {'ACCESS':<24} IMAGE")
    for r in rows:
        default = " (default)" if r["name"] == catalogue.default else ""
        access = [*(f"group {g}" for g in r["restricted_to"]), *([r["authz_resource"]] if r["authz_resource"] else [])]
        print(f"{r['name']:<18} {r['cpu']:<8} {r['memory']:<10} {r['gpu']:<4} {' + '.join(access) or 'everyone':<24} {r['image']}{default}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gen3-workspace", description="Gen3 Workspace: JupyterHub for Gen3 data commons.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the workspace on this machine (local servers, real JupyterHub and proxy)")
    up.add_argument("--data-dir", default=os.environ.get("GEN3WS_DATA_DIR", "var"), help="hub database, users' drives and secrets (default: ./var)")
    up.add_argument("--ip", default="127.0.0.1", help="loopback address to listen on (the embedded mode is for one person on this machine)")
    up.add_argument("--port", type=int, default=8000, help="public port (default 8000)")
    up.add_argument("--base-url", default="/", help="URL prefix, e.g. /lw-workspace/ behind the data portal")
    up.add_argument("--commons-url", type=_commons_url, help="Gen3 commons URL for Fence login, e.g. https://data.example.org")
    up.add_argument("--commons-name", default="", help="name of the commons on the login page")
    up.add_argument("--commons-logo", default="", help="URL of the commons' logo, shown on every hub page")
    up.add_argument("--client-id", help="Fence OAuth client id (secret from GEN3_CLIENT_SECRET)")
    up.add_argument("--flavors", help="flavor catalogue YAML (default: the example catalogue)")
    up.add_argument("--launcher-prefix", default="/lw-workspace/", help="where the data portal's launcher API is served (the portal's WORKSPACE_URL; default /lw-workspace/)")
    up.add_argument("--frame-ancestor", action="append", default=[], type=_frame_ancestor, help="origin allowed to embed the hub (repeatable)")
    up.add_argument("--portal-url", help="where logout sends the user (the data portal)")
    up.add_argument("--egress-proxy", help="egress proxy URL given to users' servers as HTTP(S)_PROXY")
    up.add_argument("--no-proxy", action="append", default=[], help="extra NO_PROXY host (repeatable)")
    up.add_argument("--no-api-key", action="store_true", help="do not mint Fence API keys for users' servers")
    up.add_argument("--dev-group", action="append", default=[], metavar="USER=GROUP", help="dev login: put USER ('*' for all) in GROUP")
    up.add_argument("--extra-config", help="a jupyterhub_config.py loaded after ours, for anything the options don't cover")
    up.add_argument("--debug", action="store_true", help="debug logging")
    up.set_defaults(func=_cmd_up)

    fl = sub.add_parser("flavors", help="check or list a flavor catalogue")
    fl.add_argument("action", choices=["validate", "list", "schema"])
    fl.add_argument("file", nargs="?")
    fl.add_argument("--json", action="store_true", help="list as JSON")
    fl.add_argument(
        "--known-group", action="append", default=[], metavar="GROUP",
        help="validate: a group the hub fills itself (an authz_groups / auth.authzGroups value, an admin group), "
        "which allowed_groups may name without the Fence warning (repeatable)",
    )
    fl.set_defaults(func=_cmd_flavors)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
