"""The ``l3lb`` command line. Every option of ``run`` can also be set by an ``L3LB_<NAME>`` variable."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

import click

from . import __version__
from .config import DEFAULT_CLASS, Config, parse_prefixes
from .logs import setup_logging

log = logging.getLogger("l3lb")


def _prefixes(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> tuple:
    try:
        return parse_prefixes(values)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="l3lb")
def cli() -> None:
    """l3lb: LoadBalancer Service IPs on lo, advertised by the host's FRR."""


@cli.command()
@click.option(
    "--prefix",
    "prefixes",
    multiple=True,
    required=True,
    envvar="L3LB_PREFIX",
    callback=_prefixes,
    help="CIDR that l3lb owns, IPv4 or IPv6; repeatable (or comma/space separated in L3LB_PREFIX).",
)
@click.option(
    "--kubeconfig",
    envvar="L3LB_KUBECONFIG",
    type=click.Path(dir_okay=False),
    help="Default: in-cluster config, then $KUBECONFIG, then ~/.kube/config.",
)
@click.option(
    "--node-name",
    envvar=["L3LB_NODE_NAME", "NODE_NAME"],
    default=lambda: socket.gethostname().lower(),
    show_default="$NODE_NAME, else the hostname",
    help="This node's name, as k3s names it.",
)
@click.option("--interface", envvar="L3LB_INTERFACE", default="lo", show_default=True)
@click.option(
    "--load-balancer-class",
    envvar="L3LB_LOAD_BALANCER_CLASS",
    default=DEFAULT_CLASS,
    show_default=True,
    help="Services of this class are ours.",
)
@click.option(
    "--default-class/--no-default-class",
    envvar="L3LB_DEFAULT_CLASS",
    default=True,
    show_default=True,
    help="Also take Services that set no loadBalancerClass.",
)
@click.option(
    "--address-lifetime",
    envvar="L3LB_ADDRESS_LIFETIME",
    type=click.IntRange(min=0),
    default=60,
    show_default=True,
    help="Seconds of valid lifetime for each address, renewed well before it ends (0: permanent). "
    "If the agent dies, its routes expire instead of blackholing traffic.",
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
    prefixes: tuple,
    kubeconfig: str | None,
    node_name: str,
    interface: str,
    load_balancer_class: str,
    default_class: bool,
    address_lifetime: int,
    dry_run: bool,
    keep_on_exit: bool,
    metrics_address: str,
    log_level: str,
    log_format: str,
) -> None:
    """Run the node agent: keep exactly the right Service IPs on the interface."""
    from .daemon import serve

    listen = None if metrics_address == "off" else _host_port(metrics_address)
    setup_logging(log_level, log_format)
    config = Config(
        prefixes=prefixes,
        node_name=node_name,
        interface=interface,
        load_balancer_class=load_balancer_class,
        default_class=default_class,
        address_lifetime=address_lifetime,
        dry_run=dry_run,
        keep_on_exit=keep_on_exit,
    )
    log.info(
        "l3lb %s starting: node=%s interface=%s prefixes=%s class=%s%s lifetime=%ss metrics=%s%s%s",
        __version__,
        node_name,
        interface,
        ",".join(map(str, prefixes)),
        load_balancer_class,
        " (and class-less)" if default_class else "",
        address_lifetime,
        metrics_address,
        " dry-run" if dry_run else "",
        " keep-on-exit" if keep_on_exit else "",
    )
    serve(config, kubeconfig, listen)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"{text!r} is not HOST:PORT or 'off'", param_hint="--metrics-address")
    return host.strip("[]"), int(port)


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="l3lb")
