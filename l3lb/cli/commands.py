"""The ``l3lb`` command line. Every option can also be set by an ``L3LB_<NAME>`` variable, so ``status`` and
``check`` see the same configuration as the running agent."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from .. import __version__
from ..config import DEFAULT_CLASS, DEFAULT_DRAIN_SECONDS, DRAIN_INTERFACE, Config, parse_prefixes
from .logs import setup_logging

log = logging.getLogger("l3lb")


def _prefixes(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> tuple:
    try:
        return parse_prefixes(values, allow_empty=True)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def _pools(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple:
    if value is None:
        return ()
    from ..ipam.pools import ConfigError, load

    try:
        return load(value)
    except ConfigError as err:
        raise click.BadParameter(str(err)) from None


def _reserves(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> tuple:
    try:
        return parse_prefixes(values, allow_empty=True)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


SHARED = [
    click.option(
        "--prefix",
        "prefixes",
        multiple=True,
        envvar="L3LB_PREFIX",
        callback=_prefixes,
        help="CIDR that l3lb owns, IPv4 or IPv6; repeatable (or comma/space separated in L3LB_PREFIX). "
        "The one-pool shorthand: give this or --config.",
    ),
    click.option(
        "--config",
        "pools",
        envvar="L3LB_CONFIG",
        type=click.Path(dir_okay=False),
        callback=_pools,
        help="Config file (YAML or JSON) with named address pools; instead of --prefix and --reserve.",
    ),
    click.option(
        "--kubeconfig",
        envvar="L3LB_KUBECONFIG",
        type=click.Path(dir_okay=False),
        help="Default: in-cluster config, then $KUBECONFIG, then ~/.kube/config.",
    ),
    click.option(
        "--node-name",
        envvar=["L3LB_NODE_NAME", "NODE_NAME"],
        default=socket.gethostname,
        callback=lambda ctx, param, value: value.lower(),
        show_default="$NODE_NAME, else the hostname",
        help="This node's name, as k3s names it: lower-cased, as k3s lower-cases --node-name and the "
        "hostname alike.",
    ),
    click.option("--interface", envvar="L3LB_INTERFACE", default="lo", show_default=True),
    click.option(
        "--load-balancer-class",
        envvar="L3LB_LOAD_BALANCER_CLASS",
        default=DEFAULT_CLASS,
        show_default=True,
        help="Services of this class are ours.",
    ),
    click.option(
        "--default-class/--no-default-class",
        envvar="L3LB_DEFAULT_CLASS",
        default=True,
        show_default=True,
        help="Also take Services that set no loadBalancerClass.",
    ),
    click.option(
        "--withdraw-on-cordon",
        envvar="L3LB_WITHDRAW_ON_CORDON",
        is_flag=True,
        help="Withdraw from a cordoned node, as l3lb did before. Off: a cordon stops new pods, not traffic "
        "(as Kubernetes' own load balancers since 1.19); drain a node with the l3lb.io/drain annotation.",
    ),
    click.option(
        "--weighted",
        envvar="L3LB_WEIGHTED",
        is_flag=True,
        help="Weighted anycast: put each Local Service's IP on the interface of its weight class (l3lbw1 "
        "... l3lbwN: its local ready endpoints, capped), for FRR to tag with the link-bandwidth community.",
    ),
    click.option(
        "--weight-classes",
        envvar="L3LB_WEIGHT_CLASSES",
        type=click.IntRange(1, 16),
        default=4,
        show_default=True,
        help="With --weighted: the number of weight classes (FRR's config needs the same number).",
    ),
]
VTY = click.option(
    "--vty-socket",
    envvar="L3LB_VTY_SOCKET",
    type=click.Path(file_okay=False),
    help="FRR's vty socket directory, if not the default.",
)
OUTPUT = click.option(
    "--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True
)


def shared(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(SHARED):
        f = option(f)
    return f


def make_config(
    prefixes: tuple,
    pools: tuple,
    node_name: str,
    interface: str,
    load_balancer_class: str,
    default_class: bool,
    weighted: bool = False,
    weight_classes: int = 4,
    withdraw_on_cordon: bool = False,
    **extra: Any,
) -> Config:
    if pools and (prefixes or extra.get("reserved")):
        raise click.UsageError("give either --config or --prefix/--reserve: the pools in the file hold both")
    if not pools and not prefixes:
        raise click.UsageError("l3lb needs its prefixes: --prefix CIDR (one pool) or --config FILE (pools)")
    try:
        return Config(
            prefixes=prefixes,
            pools=pools,
            node_name=node_name,
            interface=interface,
            load_balancer_class=load_balancer_class,
            default_class=default_class,
            weight_classes=weight_classes if weighted else 0,
            withdraw_on_cordon=withdraw_on_cordon,
            **extra,
        )
    except ValueError as err:  # --reserve outside every --prefix
        raise click.UsageError(str(err)) from None


MIN_LIFETIME = 3
"""The kernel counts lifetimes in whole seconds, and an address is renewed every third of its lifetime:
under 3 s, renewals (and the full syncs that plan them) would come more often than once a second."""


def _lifetime(value: int) -> int:
    if value != 0 and value < MIN_LIFETIME:
        raise click.BadParameter(
            f"{value} is neither 0 (permanent) nor at least {MIN_LIFETIME} seconds",
            param_hint="--address-lifetime",
        )
    return value


DRAIN = click.option(
    "--drain-seconds",
    envvar="L3LB_DRAIN_SECONDS",
    type=click.IntRange(min=0),
    default=DEFAULT_DRAIN_SECONDS,
    show_default=True,
    help="Before an IP is withdrawn for a stop (SIGTERM), the l3lb.io/drain annotation, the autoscaler's "
    "taint or the Node's deletion, it is advertised with GRACEFUL_SHUTDOWN (RFC 8326) from the l3lbdrain "
    "interface this long, so that routers move traffic off first. 0: withdrawn at once.",
)
LEASE_NAMESPACE = click.option(
    "--lease-namespace",
    envvar="L3LB_LEASE_NAMESPACE",
    default="kube-system",
    show_default=True,
    help="Namespace of the allocator's Lease (l3lb-allocator).",
)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    invoke_without_command=True,
)
@click.version_option(__version__, prog_name="l3lb")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """l3lb: LoadBalancer Service IPs on lo, advertised by the host's FRR."""
    if ctx.invoked_subcommand is None:  # `nix run .#l3lb` with no arguments: the help, not a usage error
        click.echo(ctx.get_help())


@cli.command()
@shared
@click.option(
    "--address-lifetime",
    envvar="L3LB_ADDRESS_LIFETIME",
    type=int,
    callback=lambda ctx, param, value: _lifetime(value),
    default=60,
    show_default=True,
    help=f"Seconds of valid lifetime for each address, renewed every third of it (0: permanent; else at "
    f"least {MIN_LIFETIME}). If the agent dies, its routes expire instead of blackholing traffic.",
)
@click.option(
    "--dry-run", envvar="L3LB_DRY_RUN", is_flag=True, help="Decide and log; never touch netlink or the API."
)
@click.option(
    "--keep-on-exit",
    envvar="L3LB_KEEP_ON_EXIT",
    is_flag=True,
    help="Leave the addresses in place on SIGTERM/SIGINT.",
)
@DRAIN
@click.option(
    "--announce-hold-down",
    envvar="L3LB_ANNOUNCE_HOLD_DOWN",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds a Service's reason to announce (ready endpoints) must last before its IP is announced "
    "again; a Service's l3lb.io/announce-hold-down annotation says otherwise for it. Withdrawals never wait.",
)
@click.option(
    "--reserve",
    "reserved",
    multiple=True,
    envvar="L3LB_RESERVE",
    callback=_reserves,
    help="CIDR inside the prefixes that is never allocated; repeatable.",
)
@LEASE_NAMESPACE
@click.option(
    "--metrics-address",
    envvar="L3LB_METRICS_ADDRESS",
    default="127.0.0.1:9655",
    show_default=True,
    help="HOST:PORT for /metrics, /healthz and /readyz; 'off' disables them.",
)
@click.option(
    "--log-level",
    envvar="L3LB_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--log-format",
    envvar="L3LB_LOG_FORMAT",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
)
def run(
    kubeconfig: str | None,
    address_lifetime: int,
    dry_run: bool,
    keep_on_exit: bool,
    drain_seconds: int,
    announce_hold_down: float,
    reserved: tuple,
    lease_namespace: str,
    metrics_address: str,
    log_level: str,
    log_format: str,
    **shared_opts: Any,
) -> None:
    """Run the node agent: keep exactly the right Service IPs on the interface."""
    # A stop asked for while the modules load (a second or so) is kept and honoured once the agent runs.
    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: early.append(signum))
    from ..daemon import serve

    listen = None if metrics_address == "off" else _host_port(metrics_address)
    setup_logging(log_level, log_format)
    config = make_config(
        **shared_opts,
        address_lifetime=address_lifetime,
        dry_run=dry_run,
        keep_on_exit=keep_on_exit,
        drain_seconds=drain_seconds,
        announce_hold_down=announce_hold_down,
        reserved=reserved,
    )
    log.info(
        "l3lb %s starting: node=%s interface=%s pools=%s class=%s%s lifetime=%ss drain=%ss hold-down=%gs "
        "metrics=%s%s%s%s%s",
        __version__,
        config.node_name,
        config.interface,
        " ".join(f"{p.name}:{','.join(map(str, p.prefixes))}" for p in config.pools),
        config.load_balancer_class,
        " (and class-less)" if config.default_class else "",
        address_lifetime,
        drain_seconds,
        announce_hold_down,
        metrics_address,
        " dry-run" if dry_run else "",
        " keep-on-exit" if keep_on_exit else "",
        f" weighted ({config.weight_classes} classes)" if config.weight_classes else "",
        " withdraw-on-cordon" if config.withdraw_on_cordon else "",
    )
    serve(config, kubeconfig, listen, lease_namespace, received=early, log_setup=(log_level, log_format))


@cli.command()
@shared
@click.option("--node", help="Another node: then from the API alone, without reading the interface or FRR.")
@click.option(
    "--all",
    "every_node",
    is_flag=True,
    help="Every Service of ours with its pool and the nodes that announce it, and why the others do not "
    "(from the API alone).",
)
@VTY
@click.option(
    "--metrics-address",
    envvar="L3LB_METRICS_ADDRESS",
    default="127.0.0.1:9655",
    show_default=True,
    help="Where this node's agent serves its metrics: its hold-downs and drains under way are read there.",
)
@OUTPUT
def status(
    kubeconfig: str | None,
    node: str | None,
    every_node: bool,
    vty_socket: str | None,
    metrics_address: str,
    output: str,
    **shared_opts: Any,
) -> None:
    """Our Services on this node: IPs, local ready endpoints, announced or why not (and when a hold-down or
    a drain ends), and FRR's view."""
    from .frr import Vtysh
    from .status import agent_timers, as_json, cluster, cluster_table, collect, table

    setup_logging("warning")
    if every_node:
        rows = cluster(_api(kubeconfig), make_config(**shared_opts))
        if output == "json":
            click.echo(json.dumps({"services": [dataclasses.asdict(r) for r in rows]}, indent=2))
        else:
            click.echo(cluster_table(rows))
        return
    local = node is None
    if not local:
        shared_opts["node_name"] = node
    config = make_config(**shared_opts)
    present = None
    vtysh = None
    timers = None
    if local:
        from ..netlink.tables import InterfaceMissing, NetlinkTable

        try:
            # The drain interface too: the agent's --drain-seconds is not among these options.
            t = NetlinkTable(config.interface, (*config.class_interfaces, DRAIN_INTERFACE), create=False)
            present = {ip: have.interface for ip, have in t.dump().items()}
            t.close()
        except (InterfaceMissing, OSError) as err:
            click.echo(f"cannot read {config.interface}: {err}", err=True)
        v = Vtysh(vty_socket)
        vtysh = v if v.run("show version") is not None else None
        if metrics_address != "off":
            timers = agent_timers(_host_port(metrics_address))
    rows = collect(_api(kubeconfig), config, present=present, vtysh=vtysh, timers=timers)
    if output == "json":
        click.echo(json.dumps(as_json(rows, config.node_name), indent=2))
    else:
        click.echo(f"node {config.node_name}" + ("" if local else " (from the API alone)"))
        click.echo(
            table(
                rows,
                local=present is not None,
                frr=vtysh is not None,
                weighted=bool(config.weight_classes),
                timers=timers is not None,
            )
        )


@cli.command()
@shared
@LEASE_NAMESPACE
@DRAIN
@VTY
@OUTPUT
def check(
    kubeconfig: str | None,
    lease_namespace: str,
    drain_seconds: int,
    vty_socket: str | None,
    output: str,
    **shared_opts: Any,
) -> None:
    """Check everything the agent depends on; print a fix for each failure. Exits 1 if any check fails."""
    from .check import Checks, as_json, failed, render
    from .frr import Vtysh

    setup_logging("error")
    config = make_config(**shared_opts, drain_seconds=drain_seconds)
    api = _api(kubeconfig)
    results = Checks(api, config, Vtysh(vty_socket), lease_namespace=lease_namespace).run()
    click.echo(json.dumps(as_json(results), indent=2) if output == "json" else render(results))
    sys.exit(1 if failed(results) else 0)


@cli.command("import")
@click.option(
    "--file",
    "-f",
    "files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="YAML file of MetalLB, Cilium or PureLB objects (repeatable); without it, read the cluster.",
)
@click.option("--kubeconfig", envvar="L3LB_KUBECONFIG", type=click.Path(dir_okay=False))
@click.option(
    "--output",
    "-o",
    type=click.Choice(["yaml", "nix"]),
    default="yaml",
    show_default=True,
    help="yaml: the agent's --config file; nix: an attribute set for services.l3lb.pools.",
)
def import_(files: tuple[str, ...], kubeconfig: str | None, output: str) -> None:
    """Convert MetalLB IPAddressPools (with their BGPAdvertisements), Cilium CiliumLoadBalancerIPPools and
    PureLB ServiceGroups into l3lb's pools; what has no equivalent is a comment naming the field."""
    from ..ipam.importer import ImportFailed, check, convert, from_cluster, load_files, to_nix, to_yaml

    setup_logging("warning")
    missing: list[str] = []
    try:
        objects = load_files(files) if files else None
    except ImportFailed as err:
        raise click.ClickException(str(err)) from None
    if objects is None:
        objects, missing = from_cluster(_api(kubeconfig))
    imported = convert(objects)
    imported.notes[:0] = [f"not read from the cluster: {m}" for m in missing]
    if imported.pools:
        check(imported)
    click.echo(to_nix(imported) if output == "nix" else to_yaml(imported), nl=False)
    if not imported.pools:
        raise click.ClickException("no pools found to import")


def _api(kubeconfig: str | None) -> Any:
    """The API for the one-shot commands: a kubeconfig that cannot be loaded is a one-line error."""
    from kubernetes.config.config_exception import ConfigException

    from ..k8s.api import Api, KubeconfigIncomplete, load_client

    try:
        return Api(load_client(kubeconfig))
    except (KubeconfigIncomplete, ConfigException) as err:
        raise click.ClickException(str(err)) from None


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"{text!r} is not HOST:PORT or 'off'", param_hint="--metrics-address")
    return host.strip("[]"), int(port)


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="l3lb")
