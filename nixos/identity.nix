# The script of l3lb-identity.service: on a k3s server, a least-privilege identity for the agent instead of
# cluster-admin's k3s.yaml. It mints a client certificate for user `user` in group `group` (bound by
# deploy/rbac.yaml, which the module deploys through services.k3s.manifests), signed by k3s' own client CA,
# and writes a kubeconfig with it (the apiserver's address and CA taken from k3s' admin kubeconfig).
#
# - Like k3s' own client certificates, it is valid for `days` and made anew at a start when fewer than
#   `renewDays` remain (or when k3s' client CA no longer verifies it); l3lb.service is part of k3s.service,
#   so both restart together.
# - The kubeconfig embeds the key: written with umask 077 and moved into place with rename(2), so a reader
#   (LoadCredential=) never sees it half-written.
#
# Pure: only builtins (tests run the text with bash and openssl against the test control plane's CA).
{ openssl ? "openssl"
, caCert ? "/var/lib/rancher/k3s/server/tls/client-ca.crt"
, caKey ? "/var/lib/rancher/k3s/server/tls/client-ca.key"
, adminKubeconfig ? "/etc/rancher/k3s/k3s.yaml"
, out ? "/var/lib/l3lb/kubeconfig"
, user
, group ? "l3lb:agents"
, days ? 365
, renewDays ? 90
}:
let
  q = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";
in
''
  set -euo pipefail
  umask 077
  openssl=${q openssl}
  out=${q out}
  if [ -s "$out" ] && [ -s "$out.crt" ] \
    && "$openssl" x509 -in "$out.crt" -noout -checkend ${toString (renewDays * 86400)} >/dev/null \
    && "$openssl" verify -CAfile ${q caCert} "$out.crt" >/dev/null 2>&1; then
    echo "l3lb identity: $out is valid for more than ${toString renewDays} days"
    exit 0
  fi
  # The apiserver's address and CA, as k3s wrote them for its admin (client-go's YAML: one scalar a line).
  server=$(sed -n 's/^ *server: *//p' ${q adminKubeconfig} | head -n 1)
  ca=$(sed -n 's/^ *certificate-authority-data: *//p' ${q adminKubeconfig} | head -n 1)
  if [ -z "$server" ] || [ -z "$ca" ]; then
    echo "l3lb identity: no server or certificate-authority-data in ${adminKubeconfig}" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$out")"
  work=$(mktemp -d "$(dirname "$out")/.identity.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  "$openssl" ecparam -name prime256v1 -genkey -noout -out "$work/key"
  "$openssl" req -new -key "$work/key" -subj ${q "/O=${group}/CN=${user}"} -out "$work/csr"
  "$openssl" x509 -req -in "$work/csr" -CA ${q caCert} -CAkey ${q caKey} -set_serial "0x$("$openssl" rand -hex 16)" \
    -days ${toString days} -out "$work/crt"
  b64() { base64 -w0 "$1"; }
  cat >"$work/kubeconfig" <<EOF
  apiVersion: v1
  kind: Config
  clusters:
  - name: k3s
    cluster:
      server: $server
      certificate-authority-data: $ca
  users:
  - name: ${builtins.toJSON user}
    user:
      client-certificate-data: $(b64 "$work/crt")
      client-key-data: $(b64 "$work/key")
  contexts:
  - name: l3lb
    context: {cluster: k3s, user: ${builtins.toJSON user}}
  current-context: l3lb
  EOF
  mv "$work/crt" "$out.crt"
  mv "$work/kubeconfig" "$out"
  echo "l3lb identity: wrote $out for ${user} (group ${group}), valid ${toString days} days"
''
