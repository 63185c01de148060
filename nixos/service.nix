# systemd service settings of l3lb.service (the `serviceConfig` attrset). Pure: only builtins.
# `execStart` is the full command line; `credentials` are LoadCredential entries ("name:/path");
# `allowedIPs`, when not null, is the only address space the agent may talk to (IPAddressAllow).
#
# Starting: the agent sends READY=1 once it holds what it adopted from the interface (a read of it, well
# under a second), not after the API answers: an apiserver that is down at boot must not fail the start.
# TimeoutStartSec covers loading Python and that read on a slow machine. A kubeconfig credential copied
# while k3s was still writing it cannot change: the agent exits 75 (EX_TEMPFAIL), which restarts it with a
# fresh copy and is not a failure.
#
# Stopping: with `drainSeconds` the agent first advertises what it holds with GRACEFUL_SHUTDOWN for that
# long, then withdraws it and releases its Lease; TimeoutStopSec leaves it those seconds and 20 more (the
# withdrawal and the Lease's release take well under one; the rest is for a loaded machine), after which
# systemd would SIGKILL it and the addresses would stay until their lifetime ends. KillMode=mixed: systemd's
# SIGTERM goes to the agent alone, not to the conditions worker it runs while it leads (it still leads while
# it drains, and stops the worker itself before it releases its Lease); the final SIGKILL, if any, to both.
{ execStart, credentials, allowedIPs ? null, watchdogSec ? 30, timeoutStartSec ? 30, drainSeconds ? 0 }:
(if allowedIPs == null then { } else { IPAddressDeny = "any"; IPAddressAllow = allowedIPs; })
// {
  Type = "notify";
  NotifyAccess = "main";
  WatchdogSec = watchdogSec;
  ExecStart = execStart;
  Restart = "on-failure";
  RestartSec = 2;
  RestartForceExitStatus = 75;
  SuccessExitStatus = 75;
  TimeoutStartSec = timeoutStartSec;
  TimeoutStopSec = 20 + drainSeconds;
  KillMode = "mixed";

  DynamicUser = true;
  LoadCredential = credentials;
  # Only what the agent does: change addresses through rtnetlink, talk to the apiserver, serve metrics.
  AmbientCapabilities = [ "CAP_NET_ADMIN" ];
  CapabilityBoundingSet = [ "CAP_NET_ADMIN" ];
  RestrictAddressFamilies = [ "AF_NETLINK" "AF_INET" "AF_INET6" "AF_UNIX" ];
  NoNewPrivileges = true;
  ProtectSystem = "strict";
  ProtectHome = true;
  PrivateTmp = true;
  PrivateDevices = true;
  DevicePolicy = "closed";
  PrivateMounts = true;
  ProtectKernelTunables = true;
  ProtectKernelModules = true;
  ProtectKernelLogs = true;
  ProtectControlGroups = true;
  ProtectClock = true;
  ProtectHostname = true;
  # Not ProcSubset=pid: it hides /proc/stat, and prometheus-client then drops every process_* metric.
  ProtectProc = "invisible";
  RestrictNamespaces = true;
  RestrictRealtime = true;
  RestrictSUIDSGID = true;
  LockPersonality = true;
  MemoryDenyWriteExecute = true;
  RemoveIPC = true;
  KeyringMode = "private";
  SystemCallArchitectures = "native";
  SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
  SystemCallErrorNumber = "EPERM";
  UMask = "0077";
}
