"""Interop: a generic JOSE library (joserfc) verifies a tillit envelope with trust.jwks.

Usage: python3 verify_envelope.py TRUST_JWKS ENVELOPE_FILE
Prints one JSON line: the verified CloudEvents body, and whether a tampered copy was refused.
"""
import json
import sys

from joserfc import jws
from joserfc.jwk import KeySet


def main(jwks_path: str, envelope_path: str) -> None:
    keys = KeySet.import_key_set(json.load(open(jwks_path)))
    token = open(envelope_path).read().strip()
    verified = jws.deserialize_compact(token, keys, algorithms=["EdDSA"])
    body = json.loads(verified.payload)
    header, payload, sig = token.split(".")
    tampered = header + "." + payload[:-4] + ("AAAA" if payload[-4:] != "AAAA" else "BBBB") + "." + sig
    try:
        jws.deserialize_compact(tampered, keys, algorithms=["EdDSA"])
        refused = False
    except Exception:
        refused = True
    print(json.dumps({"alg": verified.protected["alg"], "kid": verified.protected["kid"], "body": body, "tampered_refused": refused}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
