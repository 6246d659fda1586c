#!/usr/bin/env bash
# Credentials for an authenticated, encrypted Flower deployment (docs/deployment.md):
#
#   OUT_DIR/ca.crt, ca.key            self-signed certificate authority (keep ca.key offline)
#   OUT_DIR/server.crt, server.key    SuperLink TLS certificate signed by the CA, with the
#                                     subjectAltNames 127.0.0.1, ::1, localhost, superlink
#                                     (+ every -s SAN), so loopback runs, the compose network
#                                     and a real host name all verify
#   OUT_DIR/superexec.secret          shared secret of the SuperLink and a ServerApp SuperExec
#                                     running in process isolation (docker/compose.tls.yml)
#   OUT_DIR/supernodes/NAME{,.pub}    one SuperNode authentication key pair per NAME: ECDSA
#                                     P-384 in OpenSSH format, the format Flower 1.41 reads
#                                     (`flower-supernode --auth-supernode-private-key NAME`,
#                                     `flwr supernode register NAME.pub`)
#
# Existing files are kept (re-running only adds what is missing), unless -f is given.
# Needs openssl and ssh-keygen.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/make_certs.sh [-o OUT_DIR] [-d DAYS] [-s SAN]... [-f] [NODE_NAME...]

  -o OUT_DIR  output folder (default: outputs/certs)
  -d DAYS     validity of the CA and the SuperLink certificate in days (default: 365)
  -s SAN      extra subjectAltName of the SuperLink certificate, in openssl syntax,
              e.g. DNS:superlink.example.org or IP:10.0.0.5 (repeatable)
  -f          overwrite existing files (a new CA invalidates every old certificate)
  NODE_NAME   names of the SuperNode key pairs to create, e.g. cam1 cam2 (letters,
              digits, '.', '_', '-')
EOF
}

out_dir="outputs/certs"
days=365
force=0
extra_sans=()
while getopts ":o:d:s:fh" opt; do
  case "$opt" in
    o) out_dir="$OPTARG" ;;
    d) days="$OPTARG" ;;
    s) extra_sans+=("$OPTARG") ;;
    f) force=1 ;;
    h) usage; exit 0 ;;
    :) echo "make_certs: option -$OPTARG needs a value" >&2; usage >&2; exit 2 ;;
    *) echo "make_certs: unknown option -$OPTARG" >&2; usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

if ! [[ "$days" =~ ^[1-9][0-9]*$ ]]; then
  echo "make_certs: -d must be a positive number of days, got '$days'" >&2
  exit 2
fi
for san in "${extra_sans[@]}"; do
  if ! [[ "$san" =~ ^(DNS|IP):[A-Za-z0-9.:*-]+$ ]]; then
    echo "make_certs: -s expects DNS:<name> or IP:<address>, got '$san'" >&2
    exit 2
  fi
done
for name in "$@"; do
  if ! [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]]; then
    echo "make_certs: invalid SuperNode name '$name' (letters, digits, '.', '_', '-')" >&2
    exit 2
  fi
done
for tool in openssl ssh-keygen; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "make_certs: '$tool' not found on PATH" >&2
    exit 1
  fi
done

# Private keys are created unreadable for group/others.
umask 077
mkdir -p "$out_dir/supernodes"

# True when the file must be (re)written.
needs() { [ "$force" -eq 1 ] || [ ! -s "$1" ]; }

ca_renewed=0
if needs "$out_dir/ca.key" || needs "$out_dir/ca.crt"; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-384 \
    -keyout "$out_dir/ca.key" -out "$out_dir/ca.crt" -days "$days" -sha384 \
    -subj "/O=PPA federated re-id/CN=PPA deployment CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  ca_renewed=1
  echo "make_certs: wrote $out_dir/ca.crt"
fi

if [ "$ca_renewed" -eq 1 ] || needs "$out_dir/server.key" || needs "$out_dir/server.crt"; then
  sans="IP:127.0.0.1,IP:::1,DNS:localhost,DNS:superlink"
  for san in "${extra_sans[@]}"; do sans="$sans,$san"; done
  ext_file="$(mktemp)"
  csr_file="$(mktemp)"
  trap 'rm -f "$ext_file" "$csr_file"' EXIT
  printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=$sans" >"$ext_file"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-384 \
    -keyout "$out_dir/server.key" -out "$csr_file" \
    -subj "/O=PPA federated re-id/CN=superlink" 2>/dev/null
  openssl x509 -req -in "$csr_file" -CA "$out_dir/ca.crt" -CAkey "$out_dir/ca.key" \
    -CAcreateserial -CAserial "$out_dir/ca.srl" -out "$out_dir/server.crt" \
    -days "$days" -sha384 -extfile "$ext_file" 2>/dev/null
  echo "make_certs: wrote $out_dir/server.crt (subjectAltName $sans)"
fi

if needs "$out_dir/superexec.secret"; then
  openssl rand -hex 32 | tr -d '\n' >"$out_dir/superexec.secret"
  echo "make_certs: wrote $out_dir/superexec.secret"
fi

for name in "$@"; do
  key="$out_dir/supernodes/$name"
  if needs "$key" || needs "$key.pub"; then
    rm -f "$key" "$key.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "ppa-supernode-$name" -f "$key"
    echo "make_certs: wrote SuperNode key pair $key{,.pub}"
  fi
done

# Public material may be read by anyone (containers run as another uid).
chmod 755 "$out_dir" "$out_dir/supernodes"
chmod 644 "$out_dir/ca.crt" "$out_dir/server.crt"
for name in "$@"; do chmod 644 "$out_dir/supernodes/$name.pub"; done
