"""Interop: a client nobody here wrote (nats-py) connects with an identity dir tillit wrote.

Usage: python3 admin_connect.py IDENTITY_DIR
Prints one JSON line with what it saw; exits non-zero on any failure.
"""
import asyncio
import json
import os
import ssl
import sys

import nats


async def main(identity_dir: str) -> None:
    info = json.load(open(os.path.join(identity_dir, "identity.json")))
    tls = ssl.create_default_context(cafile=os.path.join(identity_dir, "tls", "ca.pem"))
    tls.load_cert_chain(
        os.path.join(identity_dir, "tls", "cert.pem"),
        os.path.join(identity_dir, "tls", "key.pem"),
    )
    url = info["nats_urls"][0].replace("nats://", "tls://", 1)
    nc = await nats.connect(
        url,
        tls=tls,
        user_credentials=os.path.join(identity_dir, "nats.creds"),
        inbox_prefix=info["inbox_prefix"].encode(),
        allow_reconnect=False,
        connect_timeout=5,
    )
    ping = json.loads((await nc.request("$SRV.PING.tillit", b"", timeout=5)).data)
    svc = json.loads((await nc.request("$SRV.INFO.tillit", b"", timeout=5)).data)
    await nc.close()
    print(json.dumps({
        "ping_name": ping["name"],
        "endpoints": [e["subject"] for e in svc["endpoints"]],
    }))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
