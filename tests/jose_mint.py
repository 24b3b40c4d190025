"""Mint tokens with an independent JOSE signer (Python `cryptography`), as `jose` 6 and
`oidc-provider` 9 do: ES512 on P-521, and Ed25519 under both names (RFC 9864 `Ed25519`, and
`EdDSA`). Writes the public keys (PEM and a JWKS) into DIR and prints the tokens as JSON.

usage: jose_mint.py DIR EXP
"""
import base64
import json
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def es512(key, header, claims):
    msg = f"{segment(header)}.{segment(claims)}"
    der = key.sign(msg.encode(), ec.ECDSA(hashes.SHA512()))
    r, s = decode_dss_signature(der)
    # JWS wants r || s, each the curve's 66 bytes.
    return f"{msg}.{b64(r.to_bytes(66, 'big') + s.to_bytes(66, 'big'))}"


def eddsa(key, header, claims):
    msg = f"{segment(header)}.{segment(claims)}"
    return f"{msg}.{b64(key.sign(msg.encode()))}"


def pem(public) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def main():
    out, exp = sys.argv[1], int(sys.argv[2])
    p521 = ec.generate_private_key(ec.SECP521R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    other = ec.generate_private_key(ec.SECP521R1())
    with open(f"{out}/p521.pem", "wb") as f:
        f.write(pem(p521.public_key()))
    with open(f"{out}/ed.pem", "wb") as f:
        f.write(pem(ed.public_key()))
    nums = p521.public_key().public_numbers()
    raw_ed = ed.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    jwks = {
        "keys": [
            {"kty": "EC", "crv": "P-521", "kid": "p521", "alg": "ES512",
             "x": b64(nums.x.to_bytes(66, "big")), "y": b64(nums.y.to_bytes(66, "big"))},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "Ed25519", "x": b64(raw_ed)},
        ]
    }
    with open(f"{out}/jwks.json", "w") as f:
        json.dump(jwks, f)
    claims = {"sub": "alice", "exp": exp}
    tokens = {
        "es512": es512(p521, {"alg": "ES512", "typ": "JWT"}, claims),
        "es512_kid": es512(p521, {"alg": "ES512", "kid": "p521"}, claims),
        "es512_other_key": es512(other, {"alg": "ES512"}, claims),
        "es512_as_es256": es512(p521, {"alg": "ES256"}, claims),
        "ed25519": eddsa(ed, {"alg": "Ed25519"}, claims),
        "ed25519_kid": eddsa(ed, {"alg": "Ed25519", "kid": "ed"}, claims),
        "eddsa": eddsa(ed, {"alg": "EdDSA"}, claims),
        "eddsa_kid": eddsa(ed, {"alg": "EdDSA", "kid": "ed"}, claims),
    }
    print(json.dumps(tokens))


main()
