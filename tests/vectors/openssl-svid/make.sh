#!/bin/sh
# Regenerates the X.509-SVID vectors in this directory with the openssl CLI, so that
# pki's validator is exercised on certificates it did not build itself.  Keys live in a
# temporary directory and are discarded; only certificates are kept.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

cat > ext.cnf <<'CNF'
[root]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
subjectAltName = URI:spiffe://vectors.example

[intermediate]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = URI:spiffe://vectors.example
nameConstraints = critical, permitted;URI:vectors.example

[leaf]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = critical, URI:spiffe://vectors.example/openssl/workload, DNS:workload.vectors.example

[two_uris]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = critical, URI:spiffe://vectors.example/a, URI:spiffe://vectors.example/b

[escape]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = critical, URI:spiffe://elsewhere.example/workload
CNF

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key root.key; key int.key; key leaf.key

openssl req -new -x509 -key root.key -subj "/O=vectors/CN=openssl root" -days 36500 \
  -set_serial 1 -sha256 -extensions root -config ext.cnf -out root.pem 2>/dev/null
openssl req -new -key int.key -subj "/O=vectors/CN=openssl intermediate" -out int.csr \
  -config ext.cnf 2>/dev/null
openssl x509 -req -in int.csr -CA root.pem -CAkey root.key -set_serial 2 -days 36000 \
  -sha256 -extfile ext.cnf -extensions intermediate -out intermediate.pem 2>/dev/null

leaf() {
  openssl req -new -key leaf.key -subj "/" -out "$1.csr" -config ext.cnf 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA intermediate.pem -CAkey int.key -set_serial "$2" \
    -days 35000 -sha256 -extfile ext.cnf -extensions "$1" -out "$1.pem" 2>/dev/null
}
leaf leaf 3
leaf two_uris 4
leaf escape 5

cp root.pem intermediate.pem leaf.pem two_uris.pem escape.pem "$here"/
