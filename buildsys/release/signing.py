"""Signing a bundle's files with OpenSSF model-signing, offline (a private key, or a key with its certificate
and chain), checking such a signature, and where keys come from: flags, then the environment, then the
bundle's `signing:` section of deploy.yaml. Key files are only read here: they never enter the bundle,
the lock or a cache key.

Signatures are deterministic (the signed statement's JSON with sorted keys, ECDSA nonces by RFC 6979), so
the same key over the same files gives the same bytes and a signed bundle stays byte-reproducible;
model-signing's own verifier (`model_signing verify key|certificate`) accepts them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, cast

from buildsys.release.bundle import SIGNATURE
from buildsys.errors import ConfigError

if TYPE_CHECKING:

    from buildsys.config.load import LoadedConfig
    from buildsys.config.schema import Signing

ENV_KEY, ENV_PASSWORD = "MODELBUILD_SIGNING_KEY", "MODELBUILD_SIGNING_KEY_PASSWORD"
ENV_CERTIFICATE, ENV_CHAIN = "MODELBUILD_SIGNING_CERTIFICATE", "MODELBUILD_SIGNING_CERTIFICATE_CHAIN"
ENV_PUBLIC_KEY = "MODELBUILD_SIGNING_PUBLIC_KEY"
CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what model-signing signs with
KEYGEN = "openssl ecparam -name prime256v1 -genkey -noout -out signing.key && openssl ec -in signing.key -pubout -out signing.pub"
Status = Literal["passed", "failed", "not run"]


@dataclass(frozen=True)
class SigningKey:
    """What signs a bundle: a private key, and its certificate and chain when signing with a certificate."""

    key: Path
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()
    password: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Trust:
    """What `bundle verify` accepts: a public key, or root certificates; `required`: a bundle without a
    valid signature fails (a given key or chain implies it)."""

    public_key: Path | None = None
    chain: tuple[Path, ...] = ()
    required: bool = False

    @property
    def anchored(self) -> bool:
        return self.public_key is not None or bool(self.chain)


@dataclass(frozen=True)
class SignatureCheck:
    status: Status
    detail: str
    signer: str = ""


def _paths(value: str | None, base: Path) -> Path | None:
    return None if not value else (base / Path(value).expanduser()).resolve()


def signing_key(cfg: "LoadedConfig", bundle: str, *, key: str | None = None, certificate: str | None = None,
                chain: tuple[str, ...] = (), env: Mapping[str, str] = os.environ) -> SigningKey | None:
    """The key that signs bundle `bundle`, or None (unsigned): `--key`/`--certificate` flags, then
    MODELBUILD_SIGNING_* variables, then deploy.yaml. Every file is checked before anything is built."""
    spec: Signing | None = cfg.project.bundles[bundle].signing
    where = ("flag", Path.cwd())
    if not key and env.get(ENV_KEY):
        key, certificate = env[ENV_KEY], certificate or env.get(ENV_CERTIFICATE)
        chain = chain or tuple(p for p in env.get(ENV_CHAIN, "").split(os.pathsep) if p)
        where = ("environment", Path.cwd())
    elif not key and spec is not None and spec.key:
        key, certificate, chain = spec.key, certificate or spec.certificate, chain or tuple(spec.certificate_chain)
        where = ("deploy.yaml", cfg.root)
    if not key:
        if spec is not None and spec.required:
            raise ConfigError(f"bundle '{bundle}' must be signed (signing.required) but no signing key is configured",
                              where=cfg.where("bundles", bundle, "signing"),
                              hint=f"pass --key PATH or set {ENV_KEY}; make one with: {KEYGEN}")
        return None
    base = where[1]
    found = SigningKey(_paths(key, base) or Path(key), _paths(certificate, base),
                       tuple(p for p in (_paths(c, base) for c in chain) if p),
                       env[ENV_PASSWORD].encode() if env.get(ENV_PASSWORD) else None)
    _check_key(found, f"the signing key from the {where[0]}")
    return found


def _check_key(found: SigningKey, what: str) -> None:
    """A clear error for every way a key cannot sign, before anything is built."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    for path in (found.key, found.certificate, *found.chain):
        if path is not None and not path.is_file():
            raise ConfigError(f"{what}: {path} does not exist", hint=f"make a key with: {KEYGEN}")
    if _tracked_by_git(found.key):
        raise ConfigError(f"{what}: {found.key} is committed to git; a private key must never be in the repository",
                          hint="move it out of the checkout (and rotate it: it has been shared)")
    try:
        private = serialization.load_pem_private_key(found.key.read_bytes(), found.password)
    except TypeError:
        hint = f"set {ENV_PASSWORD}" if found.password is None else f"unset {ENV_PASSWORD}: the key is not encrypted"
        raise ConfigError(f"{what}: {found.key} is {'encrypted' if found.password is None else 'not encrypted'}",
                          hint=hint) from None
    except ValueError:
        raise ConfigError(f"{what}: {found.key} is not a PEM private key (or its password is wrong)",
                          hint=f"make one with: {KEYGEN}") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name not in CURVES:
        kind = private.curve.name if isinstance(private, ec.EllipticCurvePrivateKey) else type(private).__name__
        raise ConfigError(f"{what}: {found.key} is a {kind} key; model-signing signs with ECDSA P-256, P-384 or P-521",
                          hint=f"make one with: {KEYGEN}")
    if found.certificate is not None:
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(found.certificate.read_bytes())
            for path in found.chain:
                x509.load_pem_x509_certificates(path.read_bytes())
        except ValueError as exc:
            raise ConfigError(f"{what}: a certificate file is not PEM ({str(exc).splitlines()[0]})") from None
        if cert.public_key() != private.public_key():
            raise ConfigError(f"{what}: certificate {found.certificate} is not the certificate of key {found.key}")
        if not found.chain:
            raise ConfigError(f"{what}: signing with certificate {found.certificate.name} needs the certificates that "
                              "issued it", hint="give the certificates that issued it: --certificate-chain CA.pem "
                              f"(or {ENV_CHAIN}, or signing.certificate_chain)")
        if found.password is not None:
            raise ConfigError(f"{what}: model-signing signs with a certificate only from an unencrypted key",
                              hint=f"unset {ENV_PASSWORD} and keep the key in a secret store instead")


def _tracked_by_git(path: Path) -> bool:
    import subprocess

    try:
        proc = subprocess.run(["git", "-C", str(path.parent), "ls-files", "--error-unmatch", path.name],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def trust(*, public_key: str | None = None, chain: tuple[str, ...] = (), require: bool = False,
          cfg: "LoadedConfig | None" = None, bundle: str | None = None, env: Mapping[str, str] = os.environ) -> Trust:
    """What verification trusts: flags, then MODELBUILD_SIGNING_PUBLIC_KEY / _CERTIFICATE_CHAIN, then the
    `signing:` section of bundle `bundle` in deploy.yaml (when one is open)."""
    base = Path.cwd()
    if not public_key and not chain:
        public_key = env.get(ENV_PUBLIC_KEY)
        chain = tuple(p for p in env.get(ENV_CHAIN, "").split(os.pathsep) if p)
    spec = cfg.project.bundles[bundle].signing if cfg is not None and bundle in cfg.project.bundles else None
    if not public_key and not chain and spec is not None and cfg is not None:
        public_key, chain, base = spec.public_key, tuple(spec.certificate_chain), cfg.root
    result = Trust(_paths(public_key, base), tuple(p for p in (_paths(c, base) for c in chain) if p),
                   require or bool(spec is not None and spec.required))
    for path in (result.public_key, *result.chain):
        if path is not None and not path.is_file():
            raise ConfigError(f"{path} does not exist", hint="give the public key (PEM) or root certificates the "
                              "bundle's signature should lead to")
    return result


# --- signing ----------------------------------------------------------------------------------------

def _deterministic_signer(key: SigningKey) -> Any:
    """model-signing 1.1's key (or certificate) signer, made deterministic: the statement's JSON with sorted
    keys (protobuf maps come out in a per-process order) and ECDSA with RFC 6979 nonces."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from google.protobuf import json_format
    from model_signing._signing import sign_certificate, sign_ec_key, sign_sigstore_pb
    from model_signing._signing import signing as ms
    from sigstore_models import intoto
    from sigstore_models.bundle import v1 as bundle_v1

    class Deterministic(sign_certificate.Signer if key.certificate else sign_ec_key.Signer):  # type: ignore[misc]
        def sign(self, payload: ms.Payload) -> ms.Signature:
            raw = json_format.MessageToJson(payload.statement.pb, sort_keys=True).encode()
            curve_hash = sign_ec_key.get_ec_key_hash(self._private_key.public_key())
            sig = self._private_key.sign(sign_sigstore_pb.pae(raw), ec.ECDSA(curve_hash, deterministic_signing=True))
            envelope = intoto.Envelope(payload=base64.b64encode(raw), payload_type=ms._IN_TOTO_JSON_PAYLOAD_TYPE,
                                       signatures=[intoto.Signature(sig=base64.b64encode(sig), keyid="")])
            return sign_sigstore_pb.Signature(bundle_v1.Bundle(
                media_type=cast(Any, sign_sigstore_pb._BUNDLE_MEDIA_TYPE), dsse_envelope=envelope,
                verification_material=self._get_verification_material()))

    if key.certificate is not None:
        return Deterministic(key.key, key.certificate, list(key.chain))
    return Deterministic(key.key, key.password)


def sign_tree(root: Path, out: Path, key: SigningKey) -> str:
    """Sign every file under `root` (but a SIGNATURE file) into `out`, as model-signing's `Config.sign`
    does with a deterministic signer; a description of the signer."""
    from model_signing import hashing
    from model_signing._signing.signing import Payload

    manifest = hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False).hash(root)
    try:
        _deterministic_signer(key).sign(Payload(manifest)).write(out)
    except ValueError as exc:  # a certificate file that does not parse, a key model-signing refuses
        from buildsys.release.bundle import BundleError

        raise BundleError(f"signing failed: {str(exc).splitlines()[0]}", hint="check the key and certificate files") from None
    return signer_of(json.loads(out.read_text()))


def signer_of(sig: dict[str, Any]) -> str:
    """Who signed, as the signature says: 'key sha256:…' or the certificate's subject and issuer."""
    material = sig.get("verificationMaterial") or {}
    chain = (material.get("x509CertificateChain") or {}).get("certificates") or []
    if chain:
        from cryptography import x509

        cert = x509.load_der_x509_certificate(base64.b64decode(chain[0]["rawBytes"]))
        return f"certificate '{cert.subject.rfc4514_string()}' issued by '{cert.issuer.rfc4514_string()}'"
    hint = (material.get("publicKey") or {}).get("hint")
    return f"key sha256:{hint[:16]}…" if hint else "an unnamed key"


def key_id(public_key: Path) -> str:
    """The id model-signing records for a key: sha256 of its public key PEM, as signer_of prints it."""
    from cryptography.hazmat.primitives import serialization

    pem = serialization.load_pem_public_key(public_key.read_bytes()).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"key sha256:{hashlib.sha256(pem).hexdigest()[:16]}…"


# --- verifying --------------------------------------------------------------------------------------

def check_signature(root: Path, sums: dict[str, tuple[int, str]], trust: Trust) -> SignatureCheck:
    """Check the signature of an unpacked bundle at `root` (`sums`: each file's size and sha256)."""
    required = trust.required or trust.anchored
    sig_path = root / SIGNATURE
    if not sig_path.is_file():
        return SignatureCheck("failed" if required else "not run", "the bundle is not signed")
    try:
        sig = json.loads(sig_path.read_text())
        signer = signer_of(sig)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return SignatureCheck("failed", f"{SIGNATURE} is not a model-signing signature ({exc})")
    if not trust.anchored:
        return SignatureCheck("failed" if required else "not run", f"signed by {signer}, but no public key or root "
                              "certificate was given to check it (--public-key, --certificate-chain)", signer)
    certified = "x509CertificateChain" in (sig.get("verificationMaterial") or {})
    if not certified and trust.public_key is None:
        return SignatureCheck("failed", f"signed by {signer}, a bare key; give its public key (--public-key)", signer)
    if certified and not trust.chain:
        return SignatureCheck("failed", f"signed by {signer}; give the root certificates it must lead to "
                              "(--certificate-chain)", signer)
    from model_signing import verifying

    config = verifying.Config()
    if certified:
        config.use_certificate_verifier(certificate_chain=trust.chain)
    else:
        assert trust.public_key is not None
        config.use_elliptic_key_verifier(public_key=trust.public_key)
    try:
        config.verify(root, sig_path)
    except Exception as exc:  # noqa: BLE001 - every way a signature can fail is a finding, named below
        return SignatureCheck("failed", _why(exc, sig, sums, trust), signer)
    return SignatureCheck("passed", f"signed by {signer}", signer)


def _why(exc: Exception, sig: dict[str, Any], sums: dict[str, tuple[int, str]], trust: Trust) -> str:
    text = str(exc).strip()
    if text.startswith("Key mismatch"):
        assert trust.public_key is not None
        return f"signed by {signer_of(sig)}, not by the given {key_id(trust.public_key)} (wrong key)"
    if text.startswith("Signature mismatch"):
        return "; ".join(_changed_files(sig, sums)) or text
    if type(exc).__name__ == "InvalidSignature":
        return f"the signature does not match what it signs: {SIGNATURE} was altered, or another key signed it"
    if type(exc).__name__ == "X509StoreContextError":
        return f"the certificate does not lead to a trusted root certificate ({text})"
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'verification failed'}"


def _changed_files(sig: dict[str, Any], sums: dict[str, tuple[int, str]]) -> list[str]:
    """Each file that differs from what the (authentic) signature covers, in plain words."""
    statement = json.loads(base64.b64decode(sig["dsseEnvelope"]["payload"]))
    predicate = statement.get("predicate", {})
    signed = {r["name"]: r["digest"] for r in predicate.get("resources", [])}
    ignored = set(predicate.get("serialization", {}).get("ignore_paths", [])) | {SIGNATURE}
    actual = {name: sha for name, (_size, sha) in sums.items() if name not in ignored}
    out = [f"{n} was modified after signing" for n in sorted(signed) if n in actual and actual[n] != signed[n]]
    out += [f"{n} was removed after signing" for n in sorted(set(signed) - set(actual))]
    out += [f"{n} was added after signing" for n in sorted(set(actual) - set(signed))]
    return out
