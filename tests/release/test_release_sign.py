"""Signed bundles: sign with a generated key (or a certificate), verify, and catch a tampered file, a tampered
provenance and a wrong key; provenance and SBOM describe what was really built; keys stay out of everything."""

from __future__ import annotations

import datetime
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import TinyProject, make_tiny_project

BUNDLES = """
bundles:
  release:
    description: tiny release
    targets: [server, int8]
    version: 1.2.0
"""
ARCHIVE = "artifacts/bundles/release-1.2.0.tar.gz"


def ec_key(path: Path) -> Path:
    """A new ECDSA P-256 key pair: PEM private key at `path`, public key at `path`.pub."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.with_suffix(".pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyProject, Path, Path]:
    """The tiny project built and bundled, signed with a key that lives outside the project."""
    keys = tmp_path_factory.mktemp("keys")
    key = ec_key(keys / "signing.key")
    tiny = make_tiny_project(tmp_path_factory.mktemp("signed") / "proj")
    tiny.config.write_text(tiny.config.read_text() + BUNDLES)
    out = tiny.run("bundle", "release", "--key", str(key)).stdout
    assert "signed by key sha256:" in out and "provenance.intoto.json, sbom.cdx.json" in out
    return tiny, tiny.root / ARCHIVE, key


def verify(tiny: TinyProject, bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return tiny.run("bundle", "verify", str(bundle), *args, check=False)


def test_signed_bundle_verifies_with_its_public_key(signed: tuple[TinyProject, Path, Path], tmp_path: Path) -> None:
    tiny, bundle, key = signed
    elsewhere = shutil.copy(bundle, tmp_path / bundle.name)
    ok = verify(tiny, Path(elsewhere), "--public-key", str(key.with_suffix(".pub")), "--require-signature")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "passed   signature: signed by key sha256:" in ok.stdout
    assert "passed   provenance: covers all" in ok.stdout and "passed   sbom:" in ok.stdout
    assert "every sha256 matches the manifest" in ok.stdout


def test_model_signing_itself_accepts_the_signature(signed: tuple[TinyProject, Path, Path], tmp_path: Path) -> None:
    """The signature is a plain model-signing signature over the unpacked bundle: its own CLI verifies it."""
    tiny, bundle, key = signed
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    proc = subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", "--signature",
                           str(tmp_path / "x/bundle.sig"), "--public_key", str(key.with_suffix(".pub")), str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "Verification succeeded" in proc.stdout, proc.stdout + proc.stderr


def test_signed_bundle_is_byte_reproducible(signed: tuple[TinyProject, Path, Path]) -> None:
    tiny, bundle, key = signed
    first = bundle.read_bytes()
    tiny.run("clean")  # deliverables come back from the cache; the archive, signature included, is the same
    tiny.run("bundle", "release", "--key", str(key))
    assert bundle.read_bytes() == first


def test_a_tampered_file_fails_verification(signed: tuple[TinyProject, Path, Path], tmp_path: Path) -> None:
    tiny, bundle, key = signed
    files = members(bundle)
    data = bytearray(files["int8/model.onnx"])
    data[len(data) // 2] ^= 0xFF
    files["int8/model.onnx"] = bytes(data)
    bad = verify(tiny, write_tar(tmp_path / "bad.tar.gz", files), "--public-key", str(key.with_suffix(".pub")))
    assert bad.returncode == 1
    assert "failed   signature: int8/model.onnx was modified after signing" in bad.stdout
    assert "failed   manifest: int8/model.onnx: sha256 does not match the manifest" in bad.stdout
    assert "failed   provenance: int8/model.onnx: its sha256 is not the one the provenance records" in bad.stdout
    assert "bad.tar.gz failed verification: signature: int8/model.onnx was modified after signing (and 2 more" in bad.stderr


def test_a_tampered_provenance_fails_verification(signed: tuple[TinyProject, Path, Path], tmp_path: Path) -> None:
    tiny, bundle, key = signed
    files = members(bundle)
    statement = json.loads(files["provenance.intoto.json"])
    statement["predicate"]["buildDefinition"]["externalParameters"]["deployFile"] = "elsewhere.yaml"
    files["provenance.intoto.json"] = json.dumps(statement).encode()
    bad = verify(tiny, write_tar(tmp_path / "prov.tar.gz", files), "--public-key", str(key.with_suffix(".pub")))
    assert bad.returncode == 1
    assert "signature: provenance.intoto.json was modified after signing" in bad.stderr
    # Unsigned, a provenance whose subjects no longer match the files is caught by the provenance check.
    files = members(bundle)
    del files["bundle.sig"]
    statement = json.loads(files["provenance.intoto.json"])
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    files["provenance.intoto.json"] = json.dumps(statement).encode()
    bad = verify(tiny, write_tar(tmp_path / "subjects.tar.gz", files))
    assert bad.returncode == 1
    name = statement["subject"][0]["name"]
    assert f"provenance: {name}: its sha256 is not the one the provenance records" in bad.stderr


def test_a_wrong_key_fails_verification(signed: tuple[TinyProject, Path, Path], tmp_path: Path) -> None:
    tiny, bundle, _key = signed
    other = ec_key(tmp_path / "other.key")
    bad = verify(tiny, bundle, "--public-key", str(other.with_suffix(".pub")))
    assert bad.returncode == 1
    assert "signature: signed by key sha256:" in bad.stderr and "(wrong key)" in bad.stderr


def test_require_signature(signed: tuple[TinyProject, Path, Path], tmp_path: Path) -> None:
    tiny, bundle, _key = signed
    files = members(bundle)
    del files["bundle.sig"]
    unsigned = write_tar(tmp_path / "unsigned.tar.gz", files)
    assert verify(tiny, unsigned).returncode == 0  # unsigned bundles still verify
    bad = verify(tiny, unsigned, "--require-signature")
    assert bad.returncode == 1 and "signature: the bundle is not signed" in bad.stderr
    # Signed, but nothing to check it against: fine without --require-signature, an error with it.
    assert "not run  signature: signed by key" in verify(tiny, bundle).stdout
    bad = verify(tiny, bundle, "--require-signature")
    assert bad.returncode == 1 and "no public key or root certificate was given" in bad.stderr


def test_keys_never_enter_the_bundle_the_lock_or_a_key(signed: tuple[TinyProject, Path, Path]) -> None:
    tiny, bundle, key = signed
    secret = key.read_bytes()
    texts = [tiny.root.joinpath("deploy.lock").read_bytes(), tiny.root.joinpath(".modelbuild/deploy.record.json").read_bytes(),
             *members(bundle).values(), *(p.read_bytes() for p in tiny.root.joinpath(".modelbuild/ac").rglob("*.json"))]
    assert not any(secret in t or str(key).encode() in t for t in texts)
    assert "Everything is fresh" in tiny.run("plan", "server", "int8").stdout  # signing changed no node's key


def test_sbom_lists_the_toolchain_actually_used(signed: tuple[TinyProject, Path, Path]) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    from buildsys.storage.keys import package_version
    from buildsys.storage.lock import Lock

    tiny, bundle, _key = signed
    files = members(bundle)
    text = files["sbom.cdx.json"].decode()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom = json.loads(text)
    libraries = {c["name"]: c["version"] for c in sbom["components"] if c["type"] == "library"}
    lock = Lock.read(tiny.root / "deploy.lock")
    keyed = {n: v for name in ("tiny/onnx", "tiny/onnx-int8", "tiny/reference", "verify:server", "verify:int8")
             for n, v in lock.nodes[name]["components"]["toolchain"].items()}
    assert libraries == keyed  # exactly the packages in the bundled nodes' keys: no TensorFlow, no coremltools
    assert {"torch", "onnx", "onnxruntime"} <= set(libraries)
    assert all(v == package_version(n) for n, v in libraries.items())  # the versions installed here
    models = {c["name"]: c for c in sbom["components"] if c["type"] == "machine-learning-model"}
    assert set(models) == {"server", "int8"}
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in sbom["dependencies"]}
    assert "pkg:pypi/onnxruntime@" + libraries["onnxruntime"] in deps["model:int8"]


def test_provenance_is_an_in_toto_statement_of_every_file(signed: tuple[TinyProject, Path, Path]) -> None:
    import hashlib

    from in_toto_attestation.v1.statement import Statement

    tiny, bundle, _key = signed
    files = members(bundle)
    raw = json.loads(files["provenance.intoto.json"])
    Statement(raw["subject"] and [_descriptor(s) for s in raw["subject"]], raw["predicateType"], raw["predicate"]).validate()
    subjects = {s["name"]: s["digest"]["sha256"] for s in raw["subject"]}
    assert subjects == {n: hashlib.sha256(b).hexdigest() for n, b in files.items()
                        if n not in ("provenance.intoto.json", "bundle.sig")}
    assert raw["predicateType"] == "https://slsa.dev/provenance/v1"
    build = raw["predicate"]["buildDefinition"]
    deps = {d.get("name"): d for d in build["resolvedDependencies"]}
    assert deps["tiny weights"]["digest"]["sha256"] == hashlib.sha256((tiny.root / "tiny.pt").read_bytes()).hexdigest()
    assert deps["deploy.yaml"]["digest"]["sha256"] == hashlib.sha256(tiny.config.read_bytes()).hexdigest()
    assert "onnxruntime" in deps and build["internalParameters"]["hostClass"]["accelerator"]
    checks = {b["name"]: b["annotations"] for b in raw["predicate"]["runDetails"]["byproducts"]}
    assert checks["verify:int8"]["verdict"] == "passed" and checks["verify:int8"]["observed"]["agreement"] > 0.9


def _descriptor(subject: dict) -> object:
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor

    return ResourceDescriptor(name=subject["name"], digest=subject["digest"]).pb


def test_provenance_names_the_git_commit(tmp_path: Path) -> None:
    tiny = make_tiny_project(tmp_path / "proj")
    tiny.config.write_text(tiny.config.read_text() + BUNDLES)
    git = ["git", "-C", str(tiny.root), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "remote", "add", "origin", "https://user:secret-token@example.com/team/models.git"], check=True)
    subprocess.run([*git, "add", "deploy.yaml", "tinynet.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "models"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    tiny.run("bundle", "release")
    source = json.loads(members(tiny.root / ARCHIVE)["provenance.intoto.json"])["predicate"]["buildDefinition"][
        "externalParameters"]["source"]
    assert source == {"uri": "https://example.com/team/models.git", "commit": commit, "dirty": False}


def test_certificate_signing(tmp_path: Path) -> None:
    """A key with its certificate, verified against the root that issued it; another root is refused."""
    root_key, root_cert = _ca(tmp_path, "root")
    leaf_key = ec_key(tmp_path / "leaf.key")
    _issue(tmp_path / "leaf.pem", leaf_key, root_key, root_cert)
    tiny = make_tiny_project(tmp_path / "proj")
    tiny.config.write_text(tiny.config.read_text() + BUNDLES.replace("[server, int8]", "[server]"))
    no_chain = tiny.run("bundle", "release", "--key", str(leaf_key), "--certificate", str(tmp_path / "leaf.pem"), check=False)
    assert no_chain.returncode == 2 and "give the certificates that issued it" in no_chain.stderr
    out = tiny.run("bundle", "release", "--key", str(leaf_key), "--certificate", str(tmp_path / "leaf.pem"),
                   "--certificate-chain", str(tmp_path / "root.pem")).stdout
    assert "signed by certificate 'CN=modelbuild test signer' issued by 'CN=root'" in out
    bundle = tiny.root / ARCHIVE
    ok = verify(tiny, bundle, "--certificate-chain", str(tmp_path / "root.pem"))
    assert ok.returncode == 0 and "passed   signature: signed by certificate" in ok.stdout, ok.stdout + ok.stderr
    keyed = verify(tiny, bundle, "--public-key", str(leaf_key.with_suffix(".pub")))
    assert keyed.returncode == 1 and "give the root certificates it must lead to (--certificate-chain)" in keyed.stderr
    _ca(tmp_path, "other")
    bad = verify(tiny, bundle, "--certificate-chain", str(tmp_path / "other.pem"))
    assert bad.returncode == 1 and "the certificate does not lead to a trusted root certificate" in bad.stderr


def _ca(folder: Path, name: str) -> tuple[object, object]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _issue(out: Path, leaf_key: Path, ca_key: object, ca_cert: object) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(leaf_key.read_bytes(), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelbuild test signer")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())  # type: ignore[attr-defined]
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize("case, message", [
    ("missing", "the signing key from the flag: {key} does not exist"),
    ("rsa", "is a RSAPrivateKey key; model-signing signs with ECDSA P-256, P-384 or P-521"),
    ("garbage", "is not a PEM private key"),
    ("required", "bundle 'release' must be signed (signing.required) but no signing key is configured"),
    ("committed", "signing.key is committed to git; a private key must never be in the repository"),
])
def test_signing_key_problems_are_named_before_anything_is_built(tmp_path: Path, case: str, message: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    tiny = make_tiny_project(tmp_path / "proj")
    key = tmp_path / "signing.key"
    bundles = BUNDLES
    if case == "rsa":
        key.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    elif case == "garbage":
        key.write_text("not a key")
    elif case == "required":
        bundles += "    signing: {required: true}\n"
    elif case == "committed":  # configured in deploy.yaml, and committed beside it
        key = ec_key(tiny.root / "signing.key")
        bundles += "    signing: {key: signing.key}\n"
        subprocess.run(["git", "-C", str(tiny.root), "init", "-q"], check=True)
        subprocess.run(["git", "-C", str(tiny.root), "add", "signing.key"], check=True)
    tiny.config.write_text(tiny.config.read_text() + bundles)
    proc = tiny.run("bundle", "release", *([] if case in ("required", "committed") else ["--key", str(key)]), check=False)
    assert proc.returncode == 2 and message.format(key=key) in proc.stderr, proc.stderr
    assert not (tiny.root / "deploy.lock").exists()  # refused before building
