"""Interop: a generic JOSE library (joserfc) verifies tillit caller tokens with the published key
sets, issuer-bound, and shows why issuer binding matters.

Usage: python3 verify_caller.py CASES_JSON
CASES_JSON: {"sets": {ISSUER: KEY_SET_DOC, ...}, "tokens": {NAME: TOKEN, ...}}
Prints one JSON line: for each token, whether issuer-bound selection accepts it (the key set of
the issuer the token claims, the key by kid within it) and whether naive selection does (one key
set holding every service's keys, the key by kid alone).
"""
import base64
import json
import sys

from joserfc import jws
from joserfc.jwk import KeySet


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def accepted(token: str, keys: KeySet) -> bool:
    try:
        jws.deserialize_compact(token, keys, algorithms=["EdDSA"])
        return True
    except Exception:
        return False


def main(path: str) -> None:
    cases = json.load(open(path))
    sets = {iss: KeySet.import_key_set({"keys": doc["keys"]}) for iss, doc in cases["sets"].items()}
    everything = KeySet.import_key_set({"keys": [k for doc in cases["sets"].values() for k in doc["keys"]]})
    out = {}
    for name, token in cases["tokens"].items():
        iss = claims_of(token).get("iss")
        bound = iss in sets and accepted(token, sets[iss])
        out[name] = {"issuer_bound": bound, "naive": accepted(token, everything)}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
