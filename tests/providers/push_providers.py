"""Local stand-ins of the three push providers, for notify's push tests.

One HTTPS server (HTTP/2 and HTTP/1.1, a self-signed certificate) plays:

- a Web Push service (RFC 8030): ``POST /_subscribe`` makes a subscription
  as a browser would (a P-256 key pair and an auth secret; the private key
  stays here) and answers its ``endpoint`` and ``keys``; ``POST /wp/{id}``
  checks the VAPID ``Authorization`` (RFC 8292: ES256 JWT, ``aud``, ``exp``,
  ``sub``) with PyJWT and decrypts the body with ``http_ece`` (RFC 8291,
  aes128gcm) using the subscription's private key;
- FCM HTTP v1: ``POST /token`` checks the OAuth2 JWT-bearer grant (RS256,
  the service account's key, ``iss``/``aud``/``scope``) and hands out an
  access token; ``POST /v1/projects/{project}/messages:send`` checks it;
- APNs: ``POST /3/device/{token}`` checks the ES256 provider token (``kid``,
  ``iss`` = team id) and the ``apns-topic``; the test asserts the request
  came over HTTP/2.

Checks are made with independent implementations (PyJWT, http_ece,
cryptography), never with notify's own code. Everything accepted or
refused is recorded: ``GET /_received``. ``POST /_script`` sets the answers
an address gets next (``{"address": ..., "statuses": [429, 503]}``; after
them, success); ``POST /_gone`` makes an address answer as unregistered.

Run: ``python push_providers.py --dir DIR``. Writes into DIR: ``cert.pem``
(the certificate to trust), ``fcm.json`` (a service account),
``apns.p8`` (an APNs auth key), ``apns.json`` (its key id and team id) and,
last, ``port`` (the port it listens on, 127.0.0.1).
"""

import argparse
import asyncio
import base64
import datetime
import ipaddress
import json
import os
import secrets
import time
import uuid
from urllib.parse import parse_qs

import http_ece
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config
from hypercorn.utils import wrap_app

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def self_signed(directory: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "push providers stand-in")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(pem(key))
    return cert_path, key_path


class Providers:
    def __init__(self, directory: str):
        self.directory = directory
        self.origin = ""  # set once the port is known
        self.received: list[dict] = []
        self.subscriptions: dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}
        self.scripts: dict[str, list[int]] = {}
        self.gone: set[str] = set()
        # Seconds every Web Push answer waits (a slow provider, for crash tests).
        self.slow = 0.0
        self.access_tokens: set[str] = set()
        self.fcm_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.apns_key = ec.generate_private_key(ec.SECP256R1())
        self.apns_key_id = "KEY" + secrets.token_hex(4).upper()
        self.apns_team = "TEAM" + secrets.token_hex(3).upper()
        self.project = "notify-test"
        self.client_email = "notify@notify-test.iam.gserviceaccount.com"

    def write_credentials(self, port: int) -> None:
        self.origin = f"https://127.0.0.1:{port}"
        account = {
            "type": "service_account",
            "project_id": self.project,
            "private_key_id": secrets.token_hex(20),
            "private_key": pem(self.fcm_key).decode(),
            "client_email": self.client_email,
            "client_id": "1",
            "token_uri": f"{self.origin}/token",
        }
        with open(os.path.join(self.directory, "fcm.json"), "w") as f:
            json.dump(account, f)
        with open(os.path.join(self.directory, "apns.p8"), "wb") as f:
            f.write(pem(self.apns_key))
        with open(os.path.join(self.directory, "apns.json"), "w") as f:
            json.dump({"key_id": self.apns_key_id, "team_id": self.apns_team}, f)

    def scripted(self, address: str) -> int | None:
        """The next scripted status for an address, if any."""
        script = self.scripts.get(address)
        if script:
            return script.pop(0)
        return None

    def record(self, **fields) -> None:
        fields["at"] = time.time()
        self.received.append(fields)


async def body_of(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def answer(send, status: int, body=b"", headers=()):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers = list(headers) + [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})


def app_for(p: Providers):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path, method = scope["path"], scope["method"]
        body = await body_of(receive)
        version = scope.get("http_version", "1.1")
        try:
            if path == "/_subscribe" and method == "POST":
                key = ec.generate_private_key(ec.SECP256R1())
                auth = secrets.token_bytes(16)
                sid = uuid.uuid4().hex
                p.subscriptions[sid] = (key, auth)
                raw = key.public_key().public_bytes(
                    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
                )
                endpoint = f"{p.origin}/wp/{sid}"
                return await answer(
                    send, 200, {"endpoint": endpoint, "keys": {"p256dh": b64u(raw), "auth": b64u(auth)}}
                )
            if path == "/_received" and method == "GET":
                return await answer(send, 200, p.received)
            if path == "/_script" and method == "POST":
                asked = json.loads(body)
                p.scripts.setdefault(asked["address"], []).extend(asked["statuses"])
                return await answer(send, 204)
            if path == "/_slow" and method == "POST":
                p.slow = json.loads(body)["ms"] / 1000
                return await answer(send, 204)
            if path == "/_gone" and method == "POST":
                p.gone.add(json.loads(body)["address"])
                return await answer(send, 204)
            if path.startswith("/wp/") and method == "POST":
                return await web_push(p, path, headers, body, version, send)
            if path == "/token" and method == "POST":
                return await fcm_token(p, body, send)
            if path.startswith("/v1/projects/") and path.endswith("/messages:send"):
                return await fcm_send(p, path, headers, body, version, send)
            if path.startswith("/3/device/") and method == "POST":
                return await apns(p, path, headers, body, version, send)
            return await answer(send, 404, {"error": f"no such route {method} {path}"})
        except Exception as e:  # a stand-in that fails says why
            p.record(provider="?", address=path, refused=f"stand-in error: {e!r}")
            return await answer(send, 500, {"error": repr(e)})

    return app


async def web_push(p, path, headers, body, version, send):
    sid = path.removeprefix("/wp/")
    address = f"{p.origin}{path}"
    if sid not in p.subscriptions:
        return await answer(send, 404, b"no such subscription")
    if address in p.gone:
        p.record(provider="web_push", address=address, status=410)
        return await answer(send, 410, b"subscription expired")
    # RFC 8292: Authorization: vapid t=<jwt>, k=<public key>
    auth = headers.get("authorization", "")
    if not auth.startswith("vapid "):
        p.record(provider="web_push", address=address, refused="no vapid authorization")
        return await answer(send, 401, b"vapid authorization required")
    params = dict(part.strip().split("=", 1) for part in auth[len("vapid ") :].split(","))
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64u(params["k"]))
    try:
        claims = jwt.decode(
            params["t"], public, algorithms=["ES256"], audience=p.origin, options={"require": ["exp", "aud", "sub"]}
        )
    except jwt.PyJWTError as e:
        p.record(provider="web_push", address=address, refused=f"vapid: {e}")
        return await answer(send, 403, f"vapid: {e}".encode())
    if claims["exp"] > time.time() + 24 * 3600:
        p.record(provider="web_push", address=address, refused="vapid exp over 24 h")
        return await answer(send, 403, b"exp too far")
    if headers.get("content-encoding") != "aes128gcm":
        p.record(provider="web_push", address=address, refused="not aes128gcm")
        return await answer(send, 415, b"aes128gcm only")
    if "ttl" not in headers:
        p.record(provider="web_push", address=address, refused="no TTL header")
        return await answer(send, 400, b"TTL required")
    status = p.scripted(address)
    if status:
        p.record(provider="web_push", address=address, status=status)
        return await answer(send, status, b"scripted", [(b"retry-after", b"1")] if status == 429 else [])
    key, secret = p.subscriptions[sid]
    try:
        plain = http_ece.decrypt(body, private_key=key, auth_secret=secret, version="aes128gcm")
    except Exception as e:
        p.record(provider="web_push", address=address, refused=f"decrypt: {e!r}")
        return await answer(send, 400, b"cannot decrypt")
    p.record(
        provider="web_push",
        address=address,
        status=201,
        payload=json.loads(plain),
        vapid_sub=claims["sub"],
        vapid_key=params["k"],
        topic=headers.get("topic"),
        urgency=headers.get("urgency"),
        ttl=int(headers["ttl"]),
        http_version=version,
    )
    # Slow to answer, like a busy push service: the message is taken (and
    # recorded) first, so a sender killed while waiting has delivered it.
    if p.slow:
        await asyncio.sleep(p.slow)
    return await answer(send, 201, b"", [(b"location", f"{address}/m/{uuid.uuid4().hex}".encode())])


async def fcm_token(p, body, send):
    form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
    if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
        p.record(provider="fcm_oauth", refused=f"grant_type {form.get('grant_type')}")
        return await answer(send, 400, {"error": "unsupported_grant_type"})
    try:
        claims = jwt.decode(
            form["assertion"],
            p.fcm_key.public_key(),
            algorithms=["RS256"],
            audience=f"{p.origin}/token",
            issuer=p.client_email,
            options={"require": ["exp", "iat", "aud", "iss"]},
        )
    except (jwt.PyJWTError, KeyError) as e:
        p.record(provider="fcm_oauth", refused=f"assertion: {e}")
        return await answer(send, 400, {"error": "invalid_grant", "error_description": str(e)})
    if FCM_SCOPE not in claims.get("scope", "").split():
        p.record(provider="fcm_oauth", refused=f"scope {claims.get('scope')}")
        return await answer(send, 400, {"error": "invalid_scope"})
    if claims["exp"] - claims["iat"] > 3600:
        p.record(provider="fcm_oauth", refused="assertion lives over an hour")
        return await answer(send, 400, {"error": "invalid_grant"})
    token = "ya29." + secrets.token_urlsafe(24)
    p.access_tokens.add(token)
    p.record(provider="fcm_oauth", status=200)
    return await answer(send, 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})


def fcm_error(status: int, code: str, fcm_code: str | None = None):
    error = {"code": status, "message": code, "status": code}
    if fcm_code:
        error["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_code}]
    return {"error": error}


async def fcm_send(p, path, headers, body, version, send):
    project = path.split("/")[3]
    bearer = headers.get("authorization", "").removeprefix("Bearer ")
    if bearer not in p.access_tokens:
        p.record(provider="fcm", refused="unknown access token")
        return await answer(send, 401, fcm_error(401, "UNAUTHENTICATED"))
    if project != p.project:
        p.record(provider="fcm", refused=f"project {project}")
        return await answer(send, 403, fcm_error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"))
    message = json.loads(body)["message"]
    address = message["token"]
    if address in p.gone:
        p.record(provider="fcm", address=address, status=404)
        return await answer(send, 404, fcm_error(404, "NOT_FOUND", "UNREGISTERED"))
    status = p.scripted(address)
    if status:
        p.record(provider="fcm", address=address, status=status)
        code = {429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}.get(status, "INTERNAL")
        extra = [(b"retry-after", b"1")] if status in (429, 503) else []
        return await answer(send, status, fcm_error(status, code, "QUOTA_EXCEEDED" if status == 429 else None), extra)
    p.record(provider="fcm", address=address, status=200, payload=message, http_version=version)
    return await answer(send, 200, {"name": f"projects/{project}/messages/{uuid.uuid4().hex}"})


async def apns(p, path, headers, body, version, send):
    address = path.removeprefix("/3/device/")
    token = headers.get("authorization", "").removeprefix("bearer ")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, p.apns_key.public_key(), algorithms=["ES256"], options={"require": ["iat", "iss"]})
    except jwt.PyJWTError as e:
        p.record(provider="apns", address=address, refused=f"provider token: {e}")
        return await answer(send, 403, {"reason": "InvalidProviderToken"})
    if header.get("kid") != p.apns_key_id or claims["iss"] != p.apns_team:
        p.record(provider="apns", address=address, refused=f"kid/iss {header.get('kid')}/{claims['iss']}")
        return await answer(send, 403, {"reason": "InvalidProviderToken"})
    if time.time() - claims["iat"] > 3600:
        p.record(provider="apns", address=address, refused="provider token older than an hour")
        return await answer(send, 403, {"reason": "ExpiredProviderToken"})
    if not headers.get("apns-topic"):
        p.record(provider="apns", address=address, refused="no apns-topic")
        return await answer(send, 400, {"reason": "MissingTopic"})
    apns_id = headers.get("apns-id") or str(uuid.uuid4())
    if address in p.gone:
        p.record(provider="apns", address=address, status=410)
        return await answer(send, 410, {"reason": "Unregistered", "timestamp": int(time.time() * 1000)})
    status = p.scripted(address)
    if status:
        p.record(provider="apns", address=address, status=status)
        reason = {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(status, "InternalServerError")
        return await answer(send, status, {"reason": reason})
    p.record(
        provider="apns",
        address=address,
        status=200,
        payload=json.loads(body),
        topic=headers.get("apns-topic"),
        push_type=headers.get("apns-push-type"),
        collapse_id=headers.get("apns-collapse-id"),
        apns_id=apns_id,
        http_version=version,
    )
    return await answer(send, 200, b"", [(b"apns-id", apns_id.encode())])


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    cert, key = self_signed(args.dir)
    providers = Providers(args.dir)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.certfile, config.keyfile = cert, key
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None
    config.errorlog = "-"
    # Bound here (port 0) and handed to hypercorn, so the port is known
    # before serving and never released in between.
    sockets = config.create_sockets()
    port = sockets.secure_sockets[0].getsockname()[1]
    providers.write_credentials(port)
    with open(os.path.join(args.dir, "port.tmp"), "w") as f:
        f.write(str(port))
    os.rename(os.path.join(args.dir, "port.tmp"), os.path.join(args.dir, "port"))
    await worker_serve(wrap_app(app_for(providers), config.wsgi_max_body_size, "asgi"), config, sockets=sockets)


if __name__ == "__main__":
    asyncio.run(main())
