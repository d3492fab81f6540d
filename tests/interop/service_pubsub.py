"""Interop: nats-py connects as an enrolled service, using only the identity dir tillit wrote.

Usage: python3 service_pubsub.py IDENTITY_DIR
Publishes and receives in the service's own namespace, then tries a subject outside it.
Prints one JSON line; exits non-zero on failure.
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
    tls.load_cert_chain(os.path.join(identity_dir, "tls", "cert.pem"), os.path.join(identity_dir, "tls", "key.pem"))
    errors = []

    async def on_error(e):
        errors.append(str(e))

    nc = await nats.connect(
        info["nats_urls"][0].replace("nats://", "tls://", 1),
        tls=tls,
        user_credentials=os.path.join(identity_dir, "nats.creds"),
        inbox_prefix=info["inbox_prefix"].encode(),
        allow_reconnect=False,
        connect_timeout=5,
        error_cb=on_error,
    )
    svc = info["service"].split("/")
    ns = f"{svc[1]}.{svc[3]}"
    sub = await nc.subscribe(f"{ns}.>")
    await nc.publish(f"{ns}.hello", b"from nats-py")
    msg = await sub.next_msg(timeout=5)
    await nc.publish("elsewhere.secret", b"x")
    await nc.flush()
    await asyncio.sleep(0.3)
    await nc.close()
    print(json.dumps({"received": msg.data.decode(), "subject": msg.subject, "errors": errors}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
